"""The real ffmpeg started before its filter chain is known: it waits for the chain on stdin
before it writes anything, the cut in the chain writes the same file as ``-frames:v`` did,
and an ffmpeg that never gets a chain fails instead of transcoding unfiltered."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from dpd.preprocess.plan import ClipPlan, ffmpeg_command, filter_chain, plan_clip
from dpd.preprocess.probe import probe_media
from dpd.preprocess.transcode import start_transcode
from tests.preprocess.conftest import ffmpeg
from tests.waiting import wait_until


def stream_facts(path: Path) -> dict[str, object]:
    """ffprobe's count of decoded frames, rate, size and pixel format of the first stream."""
    entries = "stream=nb_read_frames,r_frame_rate,width,height,pix_fmt"
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", entries, "-of", "json",
         str(path)],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    stream: dict[str, object] = json.loads(out)["streams"][0]
    return stream


def frames_v_command(plan: ClipPlan, source: Path, output: Path) -> list[str]:
    """The command as it was before the cut moved into the chain: -vf and -frames:v."""
    command = ffmpeg_command("ffmpeg", str(source), str(output), plan.kind)
    at = command.index("-filter_script:v")
    uncut = filter_chain(plan).rsplit(",trim=", 1)[0]
    command[at : at + 2] = ["-vf", uncut, "-frames:v", str(plan.frames)]
    return command


def run_with_chain(plan: ClipPlan, source: Path, output: Path) -> None:
    command = ffmpeg_command("ffmpeg", str(source), str(output), plan.kind)
    chain = filter_chain(plan).encode()
    subprocess.run(command, input=chain, check=True, capture_output=True, timeout=60)


async def test_ffmpeg_waits_for_its_chain_then_writes_the_plan(
    clip: Callable[..., Path], tmp_path: Path
) -> None:
    source = clip("w.mp4", seconds=4, fps=24, size=(320, 240))
    plan = plan_clip(await probe_media("ffprobe", source), "wan", resolution=(160, 96))
    made = tmp_path / "made.mp4"
    transcode = await start_transcode(ffmpeg_command("ffmpeg", str(source), str(made), "video"))
    try:
        process = psutil.Process(transcode.pid)
        await wait_until(lambda: any(f.path == str(source) for f in process.open_files()))
        assert not made.exists()  # input open, output not before the chain
        transcode.send_filters(filter_chain(plan))
        written = await transcode.finish(lambda frames: None)
    finally:
        await transcode.stop()
    assert written == plan.frames == 33 and plan.frames < 4 * 16  # the cut did cut
    assert stream_facts(made) == {
        "width": 160, "height": 96, "pix_fmt": "yuv420p", "r_frame_rate": "16/1",
        "nb_read_frames": "33",
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["video", "image"])
async def test_the_cut_in_the_chain_writes_what_frames_v_wrote(
    kind: str, clip: Callable[..., Path], tmp_path: Path
) -> None:
    if kind == "video":
        source = clip("v.mp4", seconds=3, fps=30, size=(320, 240))
    else:
        source = tmp_path / "still.jpg"
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=300x200", "-frames:v", "1", str(source))
    plan = plan_clip(await probe_media("ffprobe", source, kind == "image"), "wan", None, (128, 128))
    suffix = plan.suffix
    before, after = tmp_path / f"before{suffix}", tmp_path / f"after{suffix}"
    subprocess.run(frames_v_command(plan, source, before), check=True, capture_output=True)
    run_with_chain(plan, source, after)
    assert after.read_bytes() == before.read_bytes()
    assert stream_facts(after)["nb_read_frames"] == str(plan.frames)


async def test_stopped_before_the_chain_it_writes_nothing(
    clip: Callable[..., Path], tmp_path: Path
) -> None:
    source = clip("s.mp4", seconds=2, fps=24, size=(160, 120))
    made = tmp_path / "made.mp4"
    transcode = await start_transcode(ffmpeg_command("ffmpeg", str(source), str(made), "video"))
    process = psutil.Process(transcode.pid)
    await wait_until(lambda: any(f.path == str(source) for f in process.open_files()))
    await transcode.stop()
    assert not process.is_running() and not made.exists()


def test_without_a_chain_ffmpeg_fails(clip: Callable[..., Path], tmp_path: Path) -> None:
    """What a dying daemon leaves it: stdin closed with nothing written."""
    source = clip("n.mp4", seconds=2, fps=24, size=(160, 120))
    command = ffmpeg_command("ffmpeg", str(source), str(tmp_path / "made.mp4"), "video")
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert done.returncode != 0 and b"No such filter: ''" in done.stderr
