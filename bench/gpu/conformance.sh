#!/usr/bin/env bash
# dpd driving the real diffusion-pipe on one NVIDIA GPU, with no network: one command.
#
#   bench/gpu/conformance.sh [--out DIR] [conformance.py options]   on the GPU machine
#   bench/gpu/conformance.sh --simulate [--out DIR] [...]           rehearsal on any CPU
#
# On the GPU machine it needs what build_wheelhouse.sh prepared (bench/gpu/wheelhouse/, and
# the sources in bench/gpu/diffusion-pipe/ or as the tarball in the wheelhouse) and a python
# with PyTorch and CUDA (TRAINER_PYTHON, default python3). It
#   1. unpacks diffusion-pipe at the pinned commit (pins.sh) unless it is there already;
#   2. installs what the trainer's python lacks from the wheelhouse (pip --no-index), and
#      checks that train.py's imports resolve;
#   3. makes a venv for dpd (the image's packages + dpd's missing dependencies);
#   4. builds the tiny Flux model (bench/gpu/tiny_flux.py) and loads it back once;
#   5. runs the scenario (bench/gpu/conformance.py) against a real `dpd serve`.
# --simulate skips 1-4 and runs the scenario with dpd's stand-in trainer; the python that
# runs it (PYTHON, default python3) must import dpd (the repo's .venv).
# Results: DIR/report.json, DIR/report.txt, the jobs' real files, and everything but the
# work folder in DIR/conformance-results.tar.gz. Exit status 0 only if the report passed.
set -euo pipefail
KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$KIT/../.." && pwd)"
# shellcheck source=bench/gpu/pins.sh
. "$KIT/pins.sh"

simulate=0
results=""
passed=()
while [ $# -gt 0 ]; do
    case "$1" in
        --simulate) simulate=1 ;;
        --out) results="$2"; shift ;;
        *) passed+=("$1") ;;
    esac
    shift
done
results="${results:-$REPO/bench/out/gpu-conformance-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$results"
results="$(cd "$results" && pwd)"
cd "$REPO"

say() { echo "conformance: $*" >&2; }
die() { say "$*"; exit 2; }

bundle() {  # written beside, then moved in: tar must not see its own output grow
    local made
    made="$(mktemp)"
    tar -czf "$made" -C "$results" --exclude=./work --exclude=./venv-dpd \
        --exclude=./work-model --exclude=./conformance-results.tar.gz .
    mv "$made" "$results/conformance-results.tar.gz"
}

if [ "$simulate" = 1 ]; then
    python="${PYTHON:-python3}"
    "$python" -c "import dpd" 2>/dev/null || die "$python cannot import dpd (activate .venv)"
    status=0
    "$python" -m bench.gpu.conformance --simulate --out "$results" "${passed[@]}" || status=$?
    bundle
    exit "$status"
fi

# ---------------------------------------------------------------- the GPU machine
wheelhouse="$KIT/wheelhouse"
checkout="$KIT/diffusion-pipe"
trainer_python="${TRAINER_PYTHON:-python3}"
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this is not an NVIDIA GPU machine"
nvidia-smi -L | tee "$results/gpus.txt" | grep -q '^GPU ' || die "nvidia-smi lists no GPU"
"$trainer_python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "$trainer_python has no PyTorch with CUDA"
[ -d "$wheelhouse" ] || die "no $wheelhouse: run build_wheelhouse.sh where packages can be had"

if [ ! -f "$checkout/train.py" ]; then
    tarball="$wheelhouse/diffusion-pipe-$DIFFUSION_PIPE_COMMIT.tar.xz"
    [ -f "$tarball" ] || die "neither $checkout nor $tarball"
    say "unpacking $(basename "$tarball")"
    mkdir -p "$checkout"
    tar -xJf "$tarball" -C "$checkout"
fi
[ "$(cat "$checkout/COMMIT" 2>/dev/null)" = "$DIFFUSION_PIPE_COMMIT" ] \
    || die "$checkout is not diffusion-pipe at $DIFFUSION_PIPE_COMMIT (see its COMMIT file)"

say "installing the trainer's missing packages from the wheelhouse"
"$trainer_python" -m pip install --no-index --find-links "$wheelhouse/trainer" \
    -r "$wheelhouse/trainer/requirements.txt" >"$results/pip-trainer.log" 2>&1 \
    || { tail -20 "$results/pip-trainer.log" >&2; die "pip could not install the trainer's packages"; }

trainer_env=()
placeholders=""
if ! "$trainer_python" -c "import wandb" 2>/dev/null; then
    say "wandb is not installed: the trainer gets the placeholder (monitoring stays off)"
    placeholders="$KIT/placeholders"
    trainer_env=(--trainer-env "PYTHONPATH=$placeholders")
fi

say "checking that diffusion-pipe's imports resolve (before any device time is spent on dpd)"
(cd "$checkout" && PYTHONPATH="$placeholders" "$trainer_python" - >"$results/preflight.log" 2>&1 <<'PY'
import sys
sys.argv = ["train.py"]
import deepspeed, multiprocess, optimi, toml, wandb  # noqa: F401  (train.py's own imports)
from torch.utils.tensorboard import SummaryWriter  # noqa: F401
import utils.patches, utils.dataset, utils.saver  # noqa: F401,E401  (ComfyUI, HunyuanVideo)
import models.flux  # noqa: F401
print("imports resolve")
PY
) || { tail -25 "$results/preflight.log" >&2; die "diffusion-pipe's imports do not resolve"; }

say "making dpd's venv"
venv="$results/venv-dpd"
python3 -m venv "$venv"
# The image's python is itself a venv, so --system-site-packages would not show its
# packages: a .pth file appends its site-packages after the venv's own (huggingface_hub 2
# for dpd shadows the image's 1.x there, and only there).
image_site="$("$trainer_python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
venv_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
echo "$image_site" >"$venv_site/zz-gpu-image.pth"
"$venv/bin/python" -m pip install --no-index --find-links "$wheelhouse/dpd" \
    -r "$wheelhouse/dpd/requirements.txt" >"$results/pip-dpd.log" 2>&1 \
    || { tail -20 "$results/pip-dpd.log" >&2; die "pip could not install dpd's dependencies"; }

say "building the tiny Flux model"
model="$results/work-model/tiny-flux"
rm -rf "$model"
"$trainer_python" -m bench.gpu.tiny_flux "$model" --check >"$results/tiny-flux.json" \
    2>"$results/tiny-flux.log" || { tail -20 "$results/tiny-flux.log" >&2; die "tiny model failed"; }

deepspeed="$("$trainer_python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/deepspeed"
[ -x "$deepspeed" ] || die "no deepspeed launcher at $deepspeed"

status=0
"$venv/bin/python" -m bench.gpu.conformance --out "$results" --dpd-python "$venv/bin/python" \
    --trainer-python "$trainer_python" --diffusion-pipe "$checkout" --deepspeed "$deepspeed" \
    --model "$model" "${trainer_env[@]}" "${passed[@]}" || status=$?
rm -rf "$results/work-model"
bundle
exit "$status"
