"""Validation with the real ffprobe on files made by ffmpeg, broken the ways uploads break."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dpd.preprocess.probe import MediaRejected, interpret_probe, probe_media, webp_is_animated
from dpd.preprocess.transcode import ProgressParser
from tests.preprocess.conftest import ffmpeg


async def rejected(path: Path, image: bool = False) -> str:
    with pytest.raises(MediaRejected) as err:
        await probe_media("ffprobe", path, image)
    return str(err.value)


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        ("a.mp4", {"fps": 24, "seconds": 3}, (24.0, 72, 320, 240)),
        ("b.webm", {"fps": 30, "seconds": 2, "codec": "libvpx-vp9"}, (30.0, 60, 320, 240)),
        ("c.mkv", {"fps": 25, "seconds": 2, "size": (256, 144)}, (25.0, 50, 256, 144)),
        ("d.avi", {"fps": 15, "seconds": 2, "codec": "mpeg4"}, (15.0, 30, 320, 240)),
        ("e.mov", {"fps": 12, "seconds": 1, "audio": True}, (12.0, 12, 320, 240)),
    ],
)
async def test_videos_report_rate_frames_and_size(
    clip: Callable[..., Path], name: str, kw: dict, expected: tuple
) -> None:
    info = await probe_media("ffprobe", clip(name, **kw))
    assert (info.kind, info.fps, info.frame_count, info.width, info.height) == ("video", *expected)
    assert info.duration == pytest.approx(expected[1] / expected[0], abs=0.1)


async def test_still_image(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=200x100", "-frames:v", "1", str(png))
    info = await probe_media("ffprobe", png, image=True)
    assert (info.kind, info.width, info.height, info.frame_count) == ("image", 200, 100, 1)


async def test_random_bytes_are_corrupt(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 40)
    assert "corrupt or truncated" in await rejected(junk)


async def test_truncated_mp4(clip: Callable[..., Path], tmp_path: Path) -> None:
    whole = clip("t.mp4", seconds=3).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end: gone
    assert "moov atom not found" in await rejected(cut)


async def test_truncated_faststart_mp4_counts_missing_frames(tmp_path: Path) -> None:
    whole = tmp_path / "fs.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=24:duration=3", "-c:v", "libx264",
           "-movflags", "+faststart", str(whole))  # fmt: skip
    cut = tmp_path / "fscut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    message = await rejected(cut)
    assert "truncated" in message and "declares 72 frames" in message


async def test_audio_only(tmp_path: Path) -> None:
    audio = tmp_path / "song.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio))
    assert "audio only" in await rejected(audio)


async def test_zero_frames(tmp_path: Path) -> None:
    empty = tmp_path / "empty.avi"  # a raw video stream header and no frame at all
    empty.write_bytes(b"YUV4MPEG2 W320 H240 F24:1 Ip A1:1 C420jpeg\n")
    assert "zero frames" in await rejected(empty)


async def test_unsupported_codec(clip: Callable[..., Path], tmp_path: Path) -> None:
    data = clip("m.avi", codec="mpeg4", seconds=1).read_bytes()
    odd = tmp_path / "odd.avi"
    odd.write_bytes(data.replace(b"FMP4", b"ZQZQ"))  # a codec tag no decoder knows
    message = await rejected(odd)
    assert "unsupported video codec" in message and "ZQZQ" in message


async def test_animated_webp(tmp_path: Path) -> None:
    anim = tmp_path / "anim.webp"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=5:duration=1",
           "-c:v", "libwebp_anim", "-loop", "0", str(anim))  # fmt: skip
    assert "animated" in await rejected(anim, image=True)
    still = tmp_path / "still.webp"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", str(still))
    assert (await probe_media("ffprobe", still, image=True)).kind == "image"


def test_webp_header_detection() -> None:
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00"
    assert webp_is_animated(vp8x + b"\x02" + b"\x00" * 9)
    assert not webp_is_animated(vp8x + b"\x00" + b"\x00" * 9)
    assert not webp_is_animated(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)


def test_interpretation_of_reports() -> None:
    audio = {"streams": [{"codec_type": "audio", "codec_name": "aac"}]}
    with pytest.raises(MediaRejected, match="audio only"):
        interpret_probe(audio, 0, False)
    stream = {
        "codec_type": "video",
        "codec_name": "h264",
        "width": 64,
        "height": 64,
        "avg_frame_rate": "30000/1001",
        "nb_read_packets": "90",
        "nb_frames": "90",
    }
    info = interpret_probe({"streams": [stream], "format": {"duration": "3.003"}}, 1, False)
    assert info.fps == pytest.approx(29.97, abs=0.01) and info.frame_count == 90
    with pytest.raises(MediaRejected, match=r"zero frames|none is readable"):
        interpret_probe({"streams": [stream]}, 0, False)


def test_progress_parser() -> None:
    parser = ProgressParser()
    lines = ["frame=10", "fps=0.0", "out_time_us=100", "progress=continue", "frame=33",
             "progress=end", "garbage", ""]  # fmt: skip
    results = [parser.feed(line) for line in lines]
    assert [r for r in results if r is not None] == [10, 33]
    assert parser.done
