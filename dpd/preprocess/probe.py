"""ffprobe: is the upload a video or image diffusion-pipe can read, and what is in it?

``interpret_probe`` (pure) turns ffprobe's JSON into a ``MediaInfo`` or a ``MediaRejected``
with one precise reason: not media at all, corrupt or truncated, audio only, no frames, a
codec ffmpeg cannot decode, or an animated WebP (diffusion-pipe opens .webp with Pillow as a
still image and fails on an animation). ``probe_media`` runs ffprobe twice without blocking
the loop: once for streams and a packet count (demuxing only), once decoding the first
frame, which is what proves the codec works.
"""

from __future__ import annotations

import asyncio
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from dpd.preprocess.plan import MediaInfo
from dpd.preprocess.transcode import die_with_parent

IMAGE_CODECS = frozenset({"png", "mjpeg", "webp", "jpegls", "bmp", "tiff"})
PROBE_TIMEOUT = 120.0
_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")


class MediaRejected(Exception):
    """The file is not usable; the message says why, for the 422 a client sees."""


def webp_is_animated(head: bytes) -> bool:
    """A RIFF/WEBP file whose VP8X header sets the animation flag or has an ANIM chunk."""
    if len(head) < 21 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return False
    if head[12:16] == b"VP8X" and head[20] & 0x02:
        return True
    return b"ANIM" in head[:4096] or b"ANMF" in head[:4096]


def _rate(text: str | None) -> float:
    try:
        value = Fraction(text or "0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def interpret_probe(report: dict[str, Any], decoded_frames: int, image: bool) -> MediaInfo:
    """Judge one ffprobe report. ``decoded_frames``: frames the decode check produced;
    ``image``: the upload was named as a still image."""
    streams = report.get("streams") or []
    video = [s for s in streams if s.get("codec_type") == "video"]
    if not video:
        if any(s.get("codec_type") == "audio" for s in streams):
            raise MediaRejected("the file has audio only, no video stream")
        raise MediaRejected("the file has no video stream")
    stream = video[0]
    codec = stream.get("codec_name")
    if not codec:
        tag = stream.get("codec_tag_string") or "unknown"
        raise MediaRejected(f"unsupported video codec (tag {tag}): ffmpeg has no decoder for it")
    declared = int(_number(stream.get("nb_frames")) or 0)
    packets = stream.get("nb_read_packets")
    present = int(packets) if packets is not None else declared
    if present == 0 or decoded_frames == 0:
        if declared > 0:
            raise MediaRejected(f"truncated file: it declares {declared} frames, none is readable")
        raise MediaRejected("the video stream has zero frames")
    if declared > present + 1:
        raise MediaRejected(
            f"truncated file: it declares {declared} frames, only {present} are present"
        )
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if width <= 0 or height <= 0:
        raise MediaRejected("the video stream has no picture size")
    if image or (codec in IMAGE_CODECS and present == 1):
        return MediaInfo("image", width, height, 0.0, 1, 0.0, codec)
    return _video_info(report, stream, codec, present, width, height)


def _video_info(
    report: dict[str, Any], stream: dict[str, Any], codec: str, frames: int, width: int, height: int
) -> MediaInfo:
    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    duration = _number(stream.get("duration")) or _number(report.get("format", {}).get("duration"))
    if not fps and duration:
        fps = frames / duration
    if not fps or fps > 1000:
        raise MediaRejected("the video stream has no usable frame rate")
    duration = duration or frames / fps
    return MediaInfo("video", width, height, round(fps, 6), frames, round(duration, 6), codec)


async def _run(args: list[str]) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,  # a probe of a submit nobody waits for any more ends too
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode or 0, out, err


def error_reason(stderr: bytes, path: Path) -> str:
    """ffprobe's complaints without its "[demuxer @ 0x...]" prefixes or our file path."""
    reasons: list[str] = []
    for line in stderr.decode(errors="replace").splitlines():
        text = _LOG_PREFIX.sub("", line).replace(f"{path}: ", "").strip()
        if text and text not in reasons:
            reasons.append(text)
    return "; ".join(reasons[-3:]) or "ffprobe could not read it"


async def probe_media(ffprobe: str, path: Path, image: bool = False) -> MediaInfo:
    """Probe ``path``; ``MediaRejected`` when it is unusable, ``OSError`` when ffprobe
    itself cannot be run."""
    head = await asyncio.to_thread(_read_head, path)
    if webp_is_animated(head):
        raise MediaRejected("animated (multi-frame) WebP: diffusion-pipe cannot read WebP videos")
    show = [ffprobe, "-v", "error", "-count_packets", "-show_streams", "-show_format"]
    decode = [ffprobe, "-v", "error", "-select_streams", "v:0", "-show_frames"]
    decode += ["-read_intervals", "%+#1", "-show_entries", "frame=width", "-of", "json"]
    (code, out, err), (decoded_code, decoded_out, _) = await asyncio.gather(
        _run([*show, "-of", "json", str(path)]), _run([*decode, str(path)])
    )  # both at once: validation is on the upload's critical path
    if code != 0:
        raise MediaRejected(f"corrupt or truncated file: {error_reason(err, path)}")
    report = json.loads(out or b"{}")
    frames = json.loads(decoded_out or b"{}").get("frames") if decoded_code == 0 else None
    decoded = len(frames or [])
    return interpret_probe(report, decoded, image)


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4096)
