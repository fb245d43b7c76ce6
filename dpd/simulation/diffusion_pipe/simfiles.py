"""Files the simulated trainer reads and writes (reference §3.2, §3.3, §5). STDLIB ONLY.

Weights are valid safetensors files holding no tensors, with `dpd_simulation` in their
metadata; checkpoint `.pt` files are JSON documents marked the same way. The layout and
the write order (tmp/ while saving; `latest` after the checkpoint files) are the real ones.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simconfig import DirectoryCount, DirectorySpec

NOT_MEDIA = frozenset({".txt", ".npz", ".json", ".parquet", ".bak", ".db"})
VIDEO_EXTENSIONS = frozenset(
    [
        "mp4",
        "mov",
        "mkv",
        "webm",
        "avi",
        "m4v",
        "mpg",
        "mpeg",
        "ts",
        "flv",
        "wmv",
        "3gp",
        "3g2",
        "ogv",
        "asf",
        "divx",
        "dv",
        "f4v",
        "m2ts",
        "mts",
        "mxf",
        "vob",
        "yuv",
        "j2k",
        "mpo",
        "rgb",
        "dat",
        "ogg",
        "m4a",
    ]
)


def is_video(path: Path) -> bool:
    """imageio's list; the suffix must be all lower- or all upper-case."""
    suffix = path.suffix[1:]
    return suffix in VIDEO_EXTENSIONS or (suffix.isupper() and suffix.lower() in VIDEO_EXTENSIONS)


def check_directory(spec: DirectorySpec) -> None:
    """Dataset construction: the path must be an existing directory."""
    if not os.path.isdir(spec.path):
        raise RuntimeError(f"Invalid path: {spec.path}")


def media_files(spec: DirectorySpec) -> list[Path]:
    return sorted(
        p for p in Path(spec.path).glob("*") if p.is_file() and p.suffix.lower() not in NOT_MEDIA
    )


def scan_directory(spec: DirectorySpec) -> tuple[DirectoryCount, list[Path]]:
    """Count usable items; also return the media files lacking a caption.

    Raises the real AssertionError when the directory holds no media at all.
    """
    files = media_files(spec)
    if not files:
        raise AssertionError(f"Directory {spec.path} had no images/videos!")
    json_captions = Path(spec.path) / "captions.json"
    captions: dict[str, Any] | None = None
    if json_captions.is_file():
        captions = json.loads(json_captions.read_text())
    images = videos = 0
    missing: list[Path] = []
    for media in files:
        has_caption = (
            media.name in captions if captions is not None else media.with_suffix(".txt").exists()
        )
        if not has_caption:
            missing.append(media)
            if spec.skip_empty_caption:
                continue
        if is_video(media):
            videos += 1
        else:
            images += 1
    return DirectoryCount(spec=spec, images=images, videos=videos), missing


def fingerprint(spec: DirectorySpec, model_type: str) -> str:
    digest = hashlib.sha256(model_type.encode())
    for path in sorted(Path(spec.path).glob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cache_dir(spec: DirectorySpec, name: str) -> Path:
    return Path(spec.path) / "cache" / name


def read_cache_fingerprint(spec: DirectorySpec, name: str) -> str | None:
    try:
        return str(json.loads((cache_dir(spec, name) / "dpd-simulation.json").read_text())["fp"])
    except (OSError, ValueError, KeyError):
        return None


def write_cache(spec: DirectorySpec, name: str, fp: str, count: DirectoryCount) -> None:
    """A marker where the real cache lives: `<path>/cache/<name>/...`."""
    root = cache_dir(spec, name)
    if root.exists():
        shutil.rmtree(root)
    (root / "metadata").mkdir(parents=True)
    marker = {"dpd_simulation": True, "fp": fp, "images": count.images, "videos": count.videos}
    (root / "dpd-simulation.json").write_text(json.dumps(marker))


# ----------------------------------------------------------------------------- run dir


def new_run_dir(output_dir: str) -> str:
    run_dir = os.path.join(output_dir, datetime.now(UTC).strftime("%Y%m%d_%H-%M-%S"))
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


def most_recent_run_dir(output_dir: str) -> str:
    """Lexicographically last entry; IndexError when there is none (as the real one)."""
    return sorted(glob.glob(os.path.join(output_dir, "*")))[-1]


def copy_configs(run_dir: str, config_path: str, config: dict[str, Any]) -> None:
    shutil.copy(config_path, run_dir)
    shutil.copy(config["dataset"], run_dir)
    for eval_dataset in config["eval_datasets"]:
        shutil.copy(eval_dataset["config"], run_dir)  # TypeError for the string form


def write_safetensors(path: str, metadata: dict[str, str]) -> None:
    header = json.dumps({"__metadata__": metadata}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)


def save_model(
    run_dir: str,
    name: str,
    weights_file: str,
    adapter: dict[str, Any] | None,
    config_path: str,
    stages: int,
) -> None:
    """`<run_dir>/<name>/` via a transient tmp/ (exist_ok=False, like the real saver)."""
    save_dir = os.path.join(run_dir, name)
    tmp_dir = os.path.join(save_dir, "tmp")
    os.makedirs(tmp_dir, exist_ok=False)
    for stage in range(stages):
        with open(os.path.join(tmp_dir, f"state_dict_{stage}.bin"), "wb") as handle:
            handle.write(b"dpd-simulation\n")
    write_safetensors(os.path.join(save_dir, weights_file), {"dpd_simulation": "true"})
    if adapter is not None and weights_file == "adapter_model.safetensors":
        peft = {
            "peft_type": "LORA" if adapter["type"] == "lora" else "LOKR",
            "r": adapter["rank"],
            "lora_alpha": adapter["rank"],
            "lora_dropout": adapter.get("dropout", 0.0),
            "target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
            "dpd_simulation": True,
        }
        with open(os.path.join(save_dir, "adapter_config.json"), "w") as handle:
            json.dump(peft, handle, indent=2)
    shutil.copy(config_path, save_dir)
    shutil.rmtree(tmp_dir)


def checkpoint_files(run_dir: str, step: int, stages: int) -> tuple[str, list[str], list[str]]:
    """(tag, layer file paths, mp_rank file paths) of a DeepSpeed pipeline checkpoint."""
    tag = f"global_step{step}"
    folder = os.path.join(run_dir, tag)
    layers = [os.path.join(folder, f"layer_{i:02d}-model_states.pt") for i in range(stages)]
    ranks = [os.path.join(folder, f"mp_rank_{s:02d}_model_states.pt") for s in range(stages)]
    return tag, layers, ranks


def write_checkpoint_file(path: str, state: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"dpd_simulation": True, **state}, handle)


def write_latest(run_dir: str, tag: str) -> None:
    with open(os.path.join(run_dir, "latest"), "w") as handle:
        handle.write(tag)  # no newline, as DeepSpeed writes it


def read_checkpoint_step(run_dir: str, tag: str) -> int:
    """The saved step: from our mp_rank file, else from the tag's number."""
    path = os.path.join(run_dir, tag, "mp_rank_00_model_states.pt")
    try:
        with open(path) as handle:
            return int(json.load(handle)["client_state"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(tag.removeprefix("global_step"))


# ----------------------------------------------------------------------------- the "GPU"


def hold_gpu(gpu: int) -> int | None:
    """flock `$DPD_SIM_GPU_DIR/gpu<id>` for the life of the process (a stand-in for the CUDA
    context). Returns the fd, None when the knob is off; raises BlockingIOError when another
    process holds it."""
    directory = os.environ.get("DPD_SIM_GPU_DIR")
    if not directory:
        return None
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, f"gpu{gpu}"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    return fd
