"""``dpd demo``: a clearly labelled simulation of a job going from queued to completed.

It runs a real dpd daemon (spool, store, scheduler, shim, parser, HTTP) on a throw-away
state directory, with a simulated GPU and the stand-in trainer from ``dpd.simulation`` in
place of diffusion-pipe. Nothing is trained; every line it prints says so.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from dpd.config import Config, StaticGpu, load_config

BANNER = "SIMULATION — simulated GPU and stand-in trainer; nothing is trained"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "demo", help="simulate a training end to end (no GPU needed; nothing is trained)"
    )
    parser.add_argument("--port", type=int, default=5000, help="HTTP port (default 5000)")
    parser.add_argument("--dir", metavar="PATH", help="state directory (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.15, help="simulated step time")
    parser.add_argument(
        "--keep-serving", action="store_true", help="keep the daemon running after the job"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dpd-demo-"))
    try:
        return asyncio.run(_demo(root, args))
    except KeyboardInterrupt:
        return 130
    finally:
        if not args.dir and not args.keep_serving:
            shutil.rmtree(root, ignore_errors=True)


def demo_config(root: Path, port: int, step_seconds: float) -> Config:
    from dpd.simulation import simulation_paths

    deepspeed, diffusion_pipe_dir = simulation_paths()
    base = load_config(environ={})
    data = root / "data"
    return dataclasses.replace(
        base,
        source="dpd demo (simulation)",
        daemon=dataclasses.replace(
            base.daemon,
            spool_dir=root / "spool",
            state_dir=root / "state",
            storage_root=data,
            output_root=data / "training_runs",
            models_root=data / "models",
            preprocessed_root=data / "preprocessed",
            data_roots=[data],
            log_level="WARNING",
        ),
        http=dataclasses.replace(base.http, port=port),
        auth=dataclasses.replace(base.auth, enabled=False),
        gpus=dataclasses.replace(
            base.gpus, backend="static", static=[StaticGpu("Simulated GPU (demo)", 24576)]
        ),
        trainer=dataclasses.replace(
            base.trainer,
            deepspeed=deepspeed,
            diffusion_pipe_dir=diffusion_pipe_dir,
            env=dict(base.trainer.env, DPD_SIM_STEP_SECONDS=str(step_seconds)),
            stop_timeout=10.0,
        ),
    )


def make_demo_dataset(data: Path) -> Path:
    """A few captioned placeholder images: the stand-in trainer counts them like diffusion-pipe."""
    dataset = data / "datasets" / "demo"
    dataset.mkdir(parents=True, exist_ok=True)
    for index in range(8):
        (dataset / f"image_{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
        (dataset / f"image_{index}.txt").write_text(f"a simulated picture number {index}")
    models = data / "models" / "sim-sdxl.safetensors"
    models.parent.mkdir(parents=True, exist_ok=True)
    models.write_bytes(b"simulated weights")
    return dataset


def demo_job(dataset: Path, models_root: Path, epochs: int) -> dict[str, Any]:
    return {
        "task_id": "demo-lora",
        "model_type": "sdxl",
        "description": "SIMULATION: demo LoRA (nothing is trained)",
        "dataset": {"resolutions": [512], "directories": [{"path": str(dataset)}]},
        "config": {
            "epochs": epochs,
            "micro_batch_size_per_gpu": 1,
            "model": {
                "checkpoint_path": str(models_root / "sim-sdxl.safetensors"),
                "dtype": "bfloat16",
            },
            "adapter": {"type": "lora", "rank": 16, "dtype": "bfloat16"},
            "optimizer": {"type": "adamw_optimi", "lr": 2e-5},
            "save": {"save_every_n_epochs": 1},
        },
    }


async def _demo(root: Path, args: argparse.Namespace) -> int:
    from dpd.daemon import Daemon
    from dpd.logsetup import setup_logging

    config = demo_config(root, args.port, args.step_seconds)
    setup_logging("WARNING")
    print(f"[dpd demo] {BANNER}")
    daemon = Daemon(config)
    await daemon.startup()
    try:
        events = daemon.services.bus.subscribe(lambda e: e["task_id"] == "demo-lora")
        dataset = make_demo_dataset(config.daemon.storage_root)
        job = demo_job(dataset, config.daemon.models_root, args.epochs)
        incoming = config.daemon.spool_dir / "incoming"
        (incoming / ".demo-lora.json.tmp").write_text(json.dumps(job, indent=1))
        (incoming / ".demo-lora.json.tmp").rename(incoming / "demo-lora.json")
        print(
            f"[dpd demo] dropped {incoming / 'demo-lora.json'}; API on http://127.0.0.1:{daemon.port}"
        )
        print(f"[dpd demo] dashboard: {daemon.dashboard_link()}")
        final = await _show_progress(events)
        state = daemon.services.store.get("demo-lora")
        print(f"[dpd demo] task demo-lora {final}; outputs in {state['output_dir']}")
        for model in state.get("checkpoints") or []:
            print(f"[dpd demo]   saved (simulated) {model['name']}: {model['path']}")
        if args.keep_serving:
            print("[dpd demo] still serving; Ctrl-C to stop")
            await asyncio.Event().wait()
        return 0 if final == "completed" else 1
    finally:
        await daemon.shutdown()


async def _show_progress(events: Any) -> str:
    async for event in events:
        data = event["data"]
        if event["type"] == "status":
            _clear_line()
            print(f"[dpd demo] status: {data['status']}")
            if data["status"] in ("completed", "failed", "stopped"):
                return str(data["status"])
        elif event["type"] == "progress":
            _draw_bar(data)
    return "unknown"


def _draw_bar(progress: dict[str, Any]) -> None:
    percent = float(progress.get("overall_progress") or 0.0)
    filled = int(percent / 100 * 30)
    loss = progress.get("current_loss")
    text = (
        f"\r[dpd demo] [{'#' * filled}{'.' * (30 - filled)}] {percent:5.1f}% "
        f"epoch {progress.get('current_epoch') or '-'}/{progress.get('total_epochs') or '-'} "
        f"step {progress.get('current_step') or '-'}/{progress.get('total_steps') or '-'} "
        f"phase {progress.get('phase', '-')}"
        + (f" loss {loss:.4f}" if isinstance(loss, int | float) else "")
        + (f" eta {progress['eta_seconds']}s" if progress.get("eta_seconds") is not None else "")
    )
    sys.stdout.write(text)
    sys.stdout.flush()


def _clear_line() -> None:
    sys.stdout.write("\r" + " " * 100 + "\r")
