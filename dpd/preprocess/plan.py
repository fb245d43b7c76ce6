"""What to make of one uploaded clip or image: target frame rate, size, frame bucket, the
ffmpeg command and the filter chain it reads. Pure: no I/O, no ffmpeg; tested without either.

The aim is a file diffusion-pipe takes as it is (reference/diffusion-pipe.md §3): it converts
a video to the model's frame rate with ``frames = int(source_frames * model_fps /
source_fps)`` and puts it in the largest frame bucket not above that count, dropping what
is left over, and skipping the clip when it is shorter than every bucket but 1. So the
output is cut to exactly the frames of the longest bucket the clip can fill, with sides
rounded to the model's pixel multiple.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from dpd.errors import FieldError
from dpd.jobs.model_rules import MODEL_RULES, Media, ModelRules


@dataclass(frozen=True)
class ModelMedia:
    """The media facts of one model type, as preprocessing uses them. ``video``: the model
    takes videos; ``fps``: the frame rate diffusion-pipe converts them to (``None`` for an
    image-only model, or a video model whose rate dpd does not know)."""

    video: bool
    fps: int | None
    pixel_multiple: int
    frame_buckets: tuple[int, ...]


# Default frame buckets are our choice, not diffusion-pipe's: the model's VAE compresses time
# by 4 (Wan, HunyuanVideo, Cosmos) or 8 (LTX), so every bucket is 4k+1 or 8k+1, from ~2 s up
# to the length the model was trained on (Wan 81, HunyuanVideo 129, LTX 121, Cosmos-Predict2
# and Anima 93; Cosmos takes 121-frame videos only). Every other fact comes from
# dpd.jobs.model_rules, the one place model types are described.
DEFAULT_FRAME_BUCKETS: dict[str, tuple[int, ...]] = {
    "wan": (1, 33, 65, 81),
    "hunyuan-video": (1, 33, 65, 97, 129),
    "ltx-video": (1, 33, 65, 97, 121),
    "cosmos": (1, 121),
    "cosmos_predict2": (1, 33, 65, 93),
    "anima": (1, 33, 65, 93),
    "hunyuan_video_15": (1, 33, 65, 97, 121),
    "ltx2": (1, 33, 65, 97, 121),
}


def model_media(rules: ModelRules) -> ModelMedia:
    """What preprocessing needs of one model type's rules."""
    video = rules.media is Media.VIDEO
    fps = rules.native_fps if video else None
    if fps is not None and fps != int(fps):
        raise ValueError(f"{rules.model_type}: a fractional frame rate ({fps}) is not supported")
    buckets = DEFAULT_FRAME_BUCKETS.get(rules.model_type, (1,)) if video else (1,)
    return ModelMedia(video, None if fps is None else int(fps), rules.pixel_multiple, buckets)


MODELS: dict[str, ModelMedia] = {name: model_media(rules) for name, rules in MODEL_RULES.items()}

RESOLUTION_RE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
MAX_SIDE = 8192
VIDEO_SUFFIX = ".mp4"
IMAGE_SUFFIX = ".png"
FILTERS_FROM_STDIN = "pipe:0"  # ffmpeg's name for its standard input


class PlanError(Exception):
    """The upload cannot become a usable dataset item; ``errors`` says every reason."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe found, reduced to what planning needs."""

    kind: str  # "video" | "image"
    width: int
    height: int
    fps: float  # frames per second of the source (images: 0)
    frame_count: int
    duration: float
    codec: str


@dataclass(frozen=True)
class ClipPlan:
    kind: str  # "video" | "image"
    width: int
    height: int
    fps: Fraction  # output frame rate (images: 0)
    frames: int  # frames written
    bucket: int  # the frame bucket diffusion-pipe will put it in
    suffix: str  # ".mp4" | ".png"

    @property
    def duration(self) -> float:
        return float(self.frames / self.fps) if self.fps else 0.0

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


def parse_resolution(text: str) -> tuple[int, int]:
    """``"512x512"`` -> (512, 512); ValueError with the reason otherwise."""
    match = RESOLUTION_RE.match(text)
    if not match:
        raise ValueError(f"expected WIDTHxHEIGHT like '512x512', got {text!r}")
    width, height = int(match[1]), int(match[2])
    if not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
        raise ValueError(f"each side must be between 16 and {MAX_SIDE}, got {text!r}")
    return width, height


def parse_frame_buckets(text: str) -> tuple[int, ...]:
    """``"1,33,65"`` or ``"[1, 33, 65]"`` -> (1, 33, 65); ValueError otherwise."""
    parts = [p.strip() for p in text.strip().strip("[]").split(",") if p.strip()]
    if not parts or not all(p.isdigit() and 0 < int(p) <= 1024 for p in parts):
        raise ValueError(f"expected frame counts like '1,33,65', got {text!r}")
    return tuple(int(p) for p in parts)


def round_to_multiple(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def target_size(
    source: tuple[int, int], requested: tuple[int, int] | None, multiple: int
) -> tuple[int, int]:
    """Requested sides rounded to the multiple; without a request, the source's sides
    rounded down (never upscaled, aspect kept up to the crop of a few pixels)."""
    if requested is not None:
        return round_to_multiple(requested[0], multiple), round_to_multiple(requested[1], multiple)
    return tuple(max(multiple, side // multiple * multiple) for side in source)  # type: ignore[return-value]


def model_frames(source_frames: int, source_fps: float | Fraction, model_fps: int) -> int:
    """diffusion-pipe's frame count after conversion to the model's frame rate."""
    return int(source_frames * model_fps / source_fps)


def choose_bucket(frames: int, buckets: tuple[int, ...]) -> int | None:
    """The largest bucket (other than 1, which is for images) that ``frames`` can fill."""
    fitting = [b for b in buckets if 1 < b <= frames]
    return max(fitting) if fitting else None


def normalize_buckets(
    buckets: list[int] | tuple[int, ...] | None, model: ModelMedia
) -> tuple[int, ...]:
    """diffusion-pipe always adds 1; sorted, without duplicates."""
    chosen = model.frame_buckets if not buckets else tuple(buckets)
    if any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in chosen):
        raise ValueError("frame buckets must be positive integers")
    return tuple(sorted({1, *chosen}))


def plan_clip(
    media: MediaInfo,
    model_type: str,
    fps: int | None = None,
    resolution: tuple[int, int] | None = None,
    frame_buckets: tuple[int, ...] | None = None,
) -> ClipPlan:
    model = MODELS.get(model_type)
    if model is None:
        known = ", ".join(sorted(MODELS))
        raise PlanError(
            [FieldError("model_type", f"unknown model type {model_type!r}; known: {known}")]
        )
    width, height = target_size((media.width, media.height), resolution, model.pixel_multiple)
    if media.kind == "image":
        return ClipPlan("image", width, height, Fraction(0), 1, 1, IMAGE_SUFFIX)
    if not model.video:
        raise PlanError(
            [FieldError("video", f"{model_type} trains on images only; upload a png, jpg or webp")]
        )
    if model.fps is None:
        message = (
            f"dpd does not know the frame rate {model_type} converts videos to, so it cannot "
            "cut a clip to a frame bucket; upload images, or a clip prepared by hand"
        )
        raise PlanError([FieldError("video", message)])
    return _plan_video(media, model, model.fps, fps, (width, height), frame_buckets)


def _plan_video(
    media: MediaInfo,
    model: ModelMedia,
    model_fps: int,
    fps: int | None,
    size: tuple[int, int],
    frame_buckets: tuple[int, ...] | None,
) -> ClipPlan:
    out_fps = Fraction(fps) if fps else Fraction(model_fps)
    source_fps = Fraction(media.fps).limit_denominator(1001)
    available = int(media.frame_count * out_fps / source_fps)  # after our resampling
    buckets = normalize_buckets(frame_buckets, model)
    seen = model_frames(available, out_fps, model_fps)
    bucket = choose_bucket(seen, buckets)
    if bucket is None:
        smallest = min((b for b in buckets if b > 1), default=None)
        message = (
            f"too short: {media.frame_count} frames at {float(source_fps):g} fps are {seen} "
            f"frames at the model's {model_fps} fps"
            + (f"; the shortest frame bucket is {smallest}" if smallest else "; no video bucket")
        )
        raise PlanError([FieldError("video", message)])
    frames = min(available, math.ceil(bucket * out_fps / model_fps))
    return ClipPlan("video", size[0], size[1], out_fps, frames, bucket, VIDEO_SUFFIX)


def _fraction_text(value: Fraction) -> str:
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


def expected_kind(model_type: str, image: bool) -> str | None:
    """The kind of output an upload will get, as far as its name tells before probing
    (``image``: named as a still image): lets the transcode start while the probes run.
    ``None`` where the plan may refuse it (unknown model, a video for an image-only model or
    one whose frame rate dpd does not know). A video file holding a single image frame is
    planned as an image after all; the caller checks ``ClipPlan.kind``."""
    model = MODELS.get(model_type)
    if model is None:
        return None
    if image:
        return "image"
    return "video" if model.video and model.fps is not None else None


def output_suffix(kind: str) -> str:
    return IMAGE_SUFFIX if kind == "image" else VIDEO_SUFFIX


def filter_chain(plan: ClipPlan) -> str:
    """Resample (videos), scale to cover the target and crop its centre; square pixels; then
    keep the planned number of frames. The cut is a filter (``trim``), not ``-frames:v``, so
    that the command line depends on the kind of output only (``ffmpeg_command``); ffmpeg
    stops reading once the chain has ended, and writes the same file as with -frames:v."""
    w, h = plan.width, plan.height
    cover = (
        f"scale=w='if(gt(iw*{h}\\,ih*{w})\\,ceil(iw*{h}/ih)\\,{w})'"
        f":h='if(gt(iw*{h}\\,ih*{w})\\,{h}\\,ceil(ih*{w}/iw))'"
    )
    steps = [cover, f"crop={w}:{h}", "setsar=1"]
    if plan.kind == "video":
        steps = [f"fps={_fraction_text(plan.fps)}", *steps, "format=yuv420p"]
    else:
        steps.append("format=rgb24")
    steps.append(f"trim=end_frame={plan.frames}")
    return ",".join(steps)


def ffmpeg_command(ffmpeg: str, source: str, output: str, kind: str) -> list[str]:
    """The whole command line for a ``kind`` of output ("video" | "image"); progress as
    key=value blocks on stdout, errors on stderr. The filter chain (``filter_chain``) is read
    from stdin (``-filter_script:v pipe:0``): ffmpeg reads it after it has started and
    opened the input, and before it opens the output, so it can be started before the
    upload is planned. It waits for the end of stdin, and fails on an empty chain."""
    head = [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", source]
    body = ["-map", "0:v:0", "-an", "-sn", "-dn", "-filter_script:v", FILTERS_FROM_STDIN]
    if kind == "video":
        body += ["-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p"]
        body += ["-movflags", "+faststart", "-f", "mp4"]
    else:
        body += ["-c:v", "png", "-f", "image2", "-update", "1"]
    return [*head, *body, "-progress", "pipe:1", "-nostats", output]
