"""A small captioned image dataset, written with the standard library alone.

Real PNG files (Pillow opens them; the trainer decodes and caches them) with one caption
file each, as diffusion-pipe pairs them (reference §3.2: ``<stem>.txt`` beside the image).
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")


def png_bytes(width: int, height: int, pixels: bytes) -> bytes:
    """An 8-bit RGB PNG of ``pixels`` (width * height * 3 bytes, row-major)."""
    if len(pixels) != width * height * 3:
        raise ValueError(f"{len(pixels)} bytes of pixels for {width}x{height} RGB")
    rows = b"".join(b"\x00" + pixels[y * width * 3 : (y + 1) * width * 3] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def write_dataset(directory: Path, images: int, size: int, seed: int = 0) -> list[Path]:
    """``images`` noisy colour squares with captions naming the colour; returns the images."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for index in range(images):
        colour = COLOURS[index % len(COLOURS)]
        base = _rgb(colour)
        pixels = bytes(
            max(0, min(255, channel + rng.randint(-40, 40)))
            for _ in range(size * size)
            for channel in base
        )
        image = directory / f"image{index:03d}.png"
        image.write_bytes(png_bytes(size, size, pixels))
        image.with_suffix(".txt").write_text(f"a {colour} square, number {index}\n")
        written.append(image)
    return written


def _rgb(colour: str) -> tuple[int, int, int]:
    table = {
        "red": (200, 30, 30),
        "green": (30, 180, 60),
        "blue": (40, 60, 210),
        "yellow": (220, 210, 40),
        "purple": (140, 50, 160),
        "orange": (230, 130, 30),
        "white": (235, 235, 235),
        "black": (20, 20, 20),
    }
    return table[colour]
