"""Planning is pure: model facts, geometry, buckets and the ffmpeg command line."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpd.jobs.model_rules import MODEL_RULES, Media
from dpd.preprocess.datasets import DatasetItem, bucket_report
from dpd.preprocess.plan import (
    DEFAULT_FRAME_BUCKETS,
    MODELS,
    MediaInfo,
    PlanError,
    choose_bucket,
    expected_kind,
    ffmpeg_command,
    filter_chain,
    model_frames,
    parse_frame_buckets,
    parse_resolution,
    plan_clip,
    target_size,
)


def video(frames: int, fps: float, size: tuple[int, int] = (1920, 1080)) -> MediaInfo:
    return MediaInfo("video", size[0], size[1], fps, frames, frames / fps, "h264")


def test_parse_resolution() -> None:
    assert parse_resolution("512x512") == (512, 512)
    assert parse_resolution(" 1280X720 ") == (1280, 720)
    for bad in ("512", "512x", "axb", "0x512", "99999x10", "-5x5"):
        with pytest.raises(ValueError):
            parse_resolution(bad)


def test_parse_frame_buckets() -> None:
    assert parse_frame_buckets("1,33,65") == (1, 33, 65)
    assert parse_frame_buckets("[1, 33]") == (1, 33)
    for bad in ("", "a,b", "0,33", "1,-3", "5000"):
        with pytest.raises(ValueError):
            parse_frame_buckets(bad)


def test_sizes_round_to_the_model_multiple() -> None:
    assert target_size((1920, 1080), (500, 300), 16) == (496, 304)
    assert target_size((1920, 1080), (500, 300), 32) == (512, 288)
    assert target_size((1920, 1080), None, 16) == (1920, 1072)  # no upscaling, crop 8 rows
    assert target_size((10, 10), None, 16) == (16, 16)


def test_diffusion_pipe_frame_formula_and_bucket_choice() -> None:
    assert model_frames(72, 24, 16) == 48
    assert model_frames(100, 30, 16) == 53
    assert choose_bucket(48, (1, 33, 65, 81)) == 33
    assert choose_bucket(81, (1, 33, 65, 81)) == 81
    assert choose_bucket(32, (1, 33, 65, 81)) is None  # 1 is for images only


def test_wan_clip_is_cut_to_the_longest_bucket_at_16_fps() -> None:
    plan = plan_clip(video(300, 30), "wan", resolution=(512, 512))
    assert (plan.fps, plan.frames, plan.bucket) == (16, 81, 81)
    assert plan.resolution == "512x512"
    assert plan.duration == pytest.approx(81 / 16)


def test_native_frame_rates_per_model() -> None:
    assert plan_clip(video(240, 24), "hunyuan-video").fps == 24
    assert plan_clip(video(240, 24), "hunyuan-video").bucket == 129
    ltx = plan_clip(video(250, 25, (1000, 700)), "ltx-video")
    assert (ltx.fps, ltx.bucket, ltx.width % 32, ltx.height % 32) == (25, 121, 0, 0)


def test_requested_fps_leaves_enough_frames_for_the_bucket() -> None:
    plan = plan_clip(video(72, 24), "wan", fps=8)
    # 72 frames at 24 fps -> 24 at 8 fps -> diffusion-pipe sees 48 at 16 fps -> bucket 33
    assert plan.bucket == 33
    assert plan.frames == 17
    assert model_frames(plan.frames, plan.fps, 16) >= 33


def test_too_short_clip_is_refused_with_the_numbers() -> None:
    with pytest.raises(PlanError) as err:
        plan_clip(video(40, 24), "wan")
    message = err.value.errors[0].message
    assert "too short" in message and "26 frames" in message and "33" in message


def test_caller_buckets_replace_the_defaults() -> None:
    plan = plan_clip(video(40, 24), "wan", frame_buckets=(17,))
    assert plan.bucket == 17 and plan.frames == 17


def test_image_models_refuse_video_and_take_images() -> None:
    with pytest.raises(PlanError) as err:
        plan_clip(video(100, 24), "flux")
    assert err.value.errors[0].field == "video" and "images only" in str(err.value)
    image = MediaInfo("image", 1000, 700, 0, 1, 0, "png")
    plan = plan_clip(image, "flux", resolution=(1024, 1024))
    assert (plan.kind, plan.frames, plan.bucket, plan.suffix) == ("image", 1, 1, ".png")
    assert plan_clip(image, "wan").kind == "image"  # image items in a video dataset


def test_model_facts_come_from_the_model_rules() -> None:
    assert set(MODELS) == set(MODEL_RULES)
    for name, rules in MODEL_RULES.items():
        model = MODELS[name]
        assert model.video == (rules.media is Media.VIDEO), name
        assert model.fps == (rules.native_fps if model.video else None), name
        assert model.pixel_multiple == rules.pixel_multiple, name
    # Every video model whose rate is known has default buckets; no image model has any.
    with_rate = {name for name, model in MODELS.items() if model.fps is not None}
    assert set(DEFAULT_FRAME_BUCKETS) == with_rate


def test_models_of_the_cosmos_class_take_videos_at_their_rate() -> None:
    anima = plan_clip(video(300, 30), "anima")
    assert (anima.fps, anima.bucket, anima.frames) == (16, 93, 93)
    cosmos = plan_clip(video(300, 30), "cosmos")
    assert (cosmos.fps, cosmos.bucket, cosmos.frames) == (24, 121, 121)


def test_a_video_model_of_unknown_rate_takes_images_only() -> None:
    assert MODELS["minimax_h3"].video and MODELS["minimax_h3"].fps is None
    with pytest.raises(PlanError) as err:
        plan_clip(video(300, 30), "minimax_h3")
    assert err.value.errors[0].field == "video" and "frame rate" in str(err.value)
    image = MediaInfo("image", 640, 480, 0, 1, 0, "png")
    assert plan_clip(image, "minimax_h3").kind == "image"
    clip = DatasetItem("a.mp4", "video", True, frames=300, fps=30.0, width=64, height=64)
    report = bucket_report([clip], "minimax_h3", None)
    assert "frame rate" in report["dropped"][0]["reason"]
    assert "image-only" in bucket_report([clip], "flux", None)["dropped"][0]["reason"]


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(PlanError) as err:
        plan_clip(video(100, 24), "nope")
    assert err.value.errors[0].field == "model_type" and "wan" in str(err.value)


def test_ffmpeg_command_depends_on_the_kind_only() -> None:
    cmd = ffmpeg_command("ffmpeg", "/in.mov", "/out.mp4", "video")
    assert cmd[0] == "ffmpeg" and cmd[-1] == "/out.mp4"
    joined = " ".join(cmd)
    assert "-i /in.mov" in joined and "-filter_script:v pipe:0" in joined
    assert "-progress pipe:1 -nostats" in joined and "-frames:v" not in joined
    assert "libx264" in cmd and "yuv420p" in cmd and "-an" in cmd
    image = ffmpeg_command("ffmpeg", "/in.png", "/out.png", "image")
    assert "png" in image and "libx264" not in image


def test_filter_chain_ends_with_the_cut() -> None:
    plan = plan_clip(video(300, 30), "wan", resolution=(512, 288))
    chain = filter_chain(plan)
    assert chain.startswith("fps=16,") and "crop=512:288" in chain
    assert chain.endswith(",format=yuv420p,trim=end_frame=81")
    still = plan_clip(MediaInfo("image", 640, 480, 0, 1, 0, "png"), "wan")
    assert filter_chain(still).endswith(",format=rgb24,trim=end_frame=1")


def test_expected_kind_from_the_name() -> None:
    assert expected_kind("wan", image=False) == "video"
    assert expected_kind("wan", image=True) == "image"
    assert expected_kind("flux", image=False) is None  # images only: the plan refuses it
    assert expected_kind("flux", image=True) == "image"
    assert expected_kind("nope", image=True) is None


def test_default_buckets_fit_the_vae() -> None:
    for name, model in MODELS.items():
        stride = 8 if name.startswith("ltx") else 4
        assert all(b == 1 or (b - 1) % stride == 0 for b in model.frame_buckets), name


@given(
    frames=st.integers(1, 2000),
    fps=st.sampled_from([8, 12, 15, 23.976, 24, 25, 29.97, 30, 50, 60]),
    out_fps=st.one_of(st.none(), st.integers(4, 60)),
    model=st.sampled_from(["wan", "hunyuan-video", "ltx-video", "ltx2"]),
)
def test_plan_always_fills_its_bucket_and_never_overshoots(
    frames: int, fps: float, out_fps: int | None, model: str
) -> None:
    media = video(frames, fps)
    model_fps = MODELS[model].fps
    assert model_fps is not None
    try:
        plan = plan_clip(media, model, fps=out_fps)
    except PlanError:
        return
    available = int(frames * plan.fps / Fraction(fps).limit_denominator(1001))
    assert 1 <= plan.frames <= available
    assert model_frames(plan.frames, plan.fps, model_fps) >= plan.bucket
    assert plan.bucket == choose_bucket(
        model_frames(available, plan.fps, model_fps), MODELS[model].frame_buckets
    )
