"""What a trainer is started with: the command line (DESIGN §6) and the environment — pure.

The environment drops what the daemon inherited from systemd and dpd's own settings, so a
trainer can neither talk to systemd as dpd nor read dpd's secrets; the job's markers go in,
and every descendant inherits them (``JobMark``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

import dpd
from dpd.supervisor.shim_protocol import JobMark

# Inherited from systemd by the daemon; a trainer that saw them could talk to systemd as dpd.
DROPPED_ENV_NAMES = frozenset(
    {"NOTIFY_SOCKET", "CUDA_VISIBLE_DEVICES", "API_SECRET_KEY", "INVOCATION_ID", "JOURNAL_STREAM"}
)
DROPPED_ENV_PREFIXES = ("WATCHDOG_", "LISTEN_", "DPD_")
PACKAGE_ROOT = str(Path(dpd.__file__).resolve().parent.parent)  # so the shim imports this dpd


def build_trainer_command(
    deepspeed: str,
    diffusion_pipe_dir: Path,
    gpu_ids: Sequence[int],
    port: int,
    config_toml: Path,
    resume_run: str | None,
) -> list[str]:
    """DESIGN §6 exactly: GPUs pinned with --include, the port given to both programs,
    resume always naming the run directory."""
    launcher = shlex.split(deepspeed)
    if not launcher:
        raise ValueError("trainer.deepspeed is empty")
    if not gpu_ids or any(gpu < 0 for gpu in gpu_ids):
        raise ValueError(f"bad GPU ids: {list(gpu_ids)}")
    if not 0 < port < 65536:
        raise ValueError(f"bad master port: {port}")
    command = [
        *launcher,
        "--include",
        "localhost:" + ",".join(str(gpu) for gpu in gpu_ids),
        f"--master_port={port}",
        str(Path(diffusion_pipe_dir) / "train.py"),
        "--deepspeed",
        "--config",
        str(config_toml),
        f"--master_port={port}",
    ]
    if resume_run is not None:
        if not resume_run or "/" in resume_run or resume_run.startswith(("-", ".")):
            raise ValueError(f"bad run directory name to resume: {resume_run!r}")
        command += ["--resume_from_checkpoint", resume_run]
    return command


def _dropped(name: str) -> bool:
    return name in DROPPED_ENV_NAMES or name.startswith(DROPPED_ENV_PREFIXES)


def build_trainer_env(
    base: Mapping[str, str], trainer_env: Mapping[str, str], mark: JobMark | None = None
) -> dict[str, str]:
    """The daemon's environment minus systemd's sockets, dpd's own settings and secrets and
    CUDA_VISIBLE_DEVICES (the GPU choice is --include), plus trainer.env, the PCI bus order
    and the job's markers (if given; the launcher adds them otherwise), which every
    descendant inherits."""
    env = {name: value for name, value in base.items() if not _dropped(name)}
    env.update(
        (name, value) for name, value in trainer_env.items() if name not in DROPPED_ENV_NAMES
    )
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    if mark is not None:
        env.update(mark.env())
    return env


def shim_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The shim's own environment: no systemd sockets, no marker, dpd importable."""
    env = {name: value for name, value in base.items() if not _dropped(name)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env
