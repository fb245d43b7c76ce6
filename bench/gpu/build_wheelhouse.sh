#!/usr/bin/env bash
# Prepares what the GPU conformance kit installs on a GPU machine that has no network. Run
# it where the package registry can be reached, then carry bench/gpu/wheelhouse/ along.
#
#   bench/gpu/build_wheelhouse.sh [--sources-from TARBALL | --skip-sources] [--with-wandb]
#
# Writes bench/gpu/wheelhouse/ (ignored by git):
#   trainer/   wheels of what diffusion-pipe needs beyond the GPU image (image-packages.txt):
#              requirements-trainer.txt without dependencies (they would bring torch and
#              CUDA), requirements-trainer-deps.txt with theirs; requirements.txt for pip
#   dpd/       wheels of dpd's dependencies (pyproject.toml) with theirs, and requirements.txt
#   diffusion-pipe-<commit>.tar.xz
#              diffusion-pipe at the commit of pins.sh, with the ComfyUI and HunyuanVideo
#              submodules at the commits it records, no .git, and a COMMIT file
#
# Where the sources come from: by default `git clone` of diffusion-pipe's public repository
# on this machine, then `git submodule update --init` of the two submodules (both need
# GitHub). --sources-from takes a tarball of that same layout made elsewhere instead; the
# session that wrote this kit could make none (ComfyUI's history was too large to bring to
# it), so on a machine without GitHub use --skip-sources and bring the tarball separately.
# DeepSpeed is published as source only: its pure-Python wheel is built here (no CUDA ops).
# The total is printed; the script fails when it is over WHEELHOUSE_LIMIT_MIB (pins.sh),
# since the whole kit must cross to the GPU machine in 64 MiB.
set -euo pipefail
KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$KIT/../.." && pwd)"
# shellcheck source=bench/gpu/pins.sh
. "$KIT/pins.sh"

sources="clone"
tarball=""
with_wandb=0
while [ $# -gt 0 ]; do
    case "$1" in
        --sources-from) sources="tarball"; tarball="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
        --skip-sources) sources="skip" ;;
        --with-wandb) with_wandb=1 ;;
        *) echo "usage: $0 [--sources-from TARBALL | --skip-sources] [--with-wandb]" >&2; exit 2 ;;
    esac
    shift
done

wheelhouse="$KIT/wheelhouse"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
rm -rf "$wheelhouse"
mkdir -p "$wheelhouse/trainer" "$wheelhouse/dpd" "$scratch/built"
say() { echo "wheelhouse: $*" >&2; }

# The GPU image's python: CPython 3.12 on x86-64 Linux.
target=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)

# ------------------------------------------------------------------ sources
fetch_sources() {
    local src="$scratch/diffusion-pipe"
    case "$sources" in
        skip) say "sources skipped (--skip-sources)"; return ;;
        tarball)
            say "sources from $tarball"
            mkdir -p "$src"
            tar -xf "$tarball" -C "$src" ;;
        clone)
            say "cloning $DIFFUSION_PIPE_REPO at $DIFFUSION_PIPE_COMMIT"
            git clone --quiet --filter=blob:none "$DIFFUSION_PIPE_REPO" "$src"
            git -C "$src" -c advice.detachedHead=false checkout --quiet "$DIFFUSION_PIPE_COMMIT"
            # shellcheck disable=SC2086
            git -C "$src" submodule update --init --quiet -- $DIFFUSION_PIPE_SUBMODULES
            echo "$DIFFUSION_PIPE_COMMIT" >"$src/COMMIT" ;;
    esac
    [ "$(cat "$src/COMMIT")" = "$DIFFUSION_PIPE_COMMIT" ] || { say "not the pinned commit"; exit 1; }
    for module in $DIFFUSION_PIPE_SUBMODULES; do
        [ -n "$(ls -A "$src/$module" 2>/dev/null)" ] || { say "$module is empty"; exit 1; }
    done
    # The tree as it is, less what the flux path never reads and the budget cannot hold:
    # history, CI, tests and pictures, and every data file over 512 KiB (tokenizers and
    # vocabularies of other models' text encoders: diffusion-pipe's configs/ alone hold
    # about 20 MB of them). No file is changed; EXCLUDED.txt lists what was left out.
    (cd "$src" && find . -type f -size +512k ! -name '*.py' ! -path './.git/*' \
        ! -path '*/.git/*' | sort >"$src/EXCLUDED.txt")
    say "leaving out $(wc -l <"$src/EXCLUDED.txt") data files over 512 KiB (EXCLUDED.txt)"
    tar -cJf "$wheelhouse/diffusion-pipe-$DIFFUSION_PIPE_COMMIT.tar.xz" -C "$src" \
        --exclude=.git --exclude='.github' --exclude='submodules/*/tests' \
        --exclude='submodules/*/tests-unit' --exclude='submodules/HunyuanVideo/assets' \
        --exclude='*.png' --exclude='*.jpg' --exclude='*.webp' --exclude='*.mp4' \
        --exclude-from="$src/EXCLUDED.txt" .
    comfy_requirements="$src/submodules/ComfyUI/requirements.txt"
}

# ------------------------------------------------------------------ wheels
build_source_only() {
    # Published as source only, all pure Python: DeepSpeed (its CUDA ops are built at run
    # time, and the kit's optimizer needs none), antlr4 4.9 (hydra-core pins it), sdnotify.
    say "building the wheels of source-only packages"
    DS_BUILD_OPS=0 python3 -m pip wheel --quiet --no-deps --wheel-dir "$scratch/built" \
        "deepspeed==$DEEPSPEED_VERSION" "antlr4-python3-runtime==4.9.3" "sdnotify>=0.3.2" \
        >/dev/null
}

# fetch REQUIREMENTS OUTDIR [--no-deps]: download the wheels for the GPU image's python.
fetch() {
    local wanted="$1" out="$2"
    shift 2
    python3 -m pip download --quiet "$@" "${target[@]}" --find-links "$scratch/built" \
        --dest "$out" -r "$wanted"
}

# drop_image_packages OUTDIR [KEEP...]: remove the wheels of packages the GPU image holds
# (image-packages.txt), except those named; pip then uses the image's.
drop_image_packages() {
    local out="$1"
    shift
    python3 - "$out" "$KIT/image-packages.txt" "$@" <<'PY'
import pathlib, re, sys
out, listing, keep = pathlib.Path(sys.argv[1]), sys.argv[2], set(sys.argv[3:])
norm = lambda name: re.sub(r"[-_.]+", "-", name.lower())
image = {norm(line.split("==")[0].strip()) for line in open(listing)
         if line.strip() and not line.startswith("#")}
for wheel in out.glob("*.whl"):
    name = norm(wheel.name.split("-")[0])
    if name in image and name not in {norm(k) for k in keep}:
        wheel.unlink()
PY
}

# pure_comfy_kitchen OUTDIR: comfy-kitchen ships a pure-Python wheel beside 60+ MB of CUDA
# kernels; keep the former (ComfyUI falls back to its eager backend).
pure_comfy_kitchen() {
    local out="$1" found
    found="$(ls "$out"/comfy_kitchen-*.whl 2>/dev/null | head -1)"
    [ -n "$found" ] || return 0
    local version
    version="$(basename "$found" | cut -d- -f2)"
    rm -f "$out"/comfy_kitchen-*.whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform any \
        --python-version 3.12 --dest "$out" "comfy-kitchen==$version"
}

comfy_requirements=""
fetch_sources
build_source_only

wanted="$scratch/trainer-wanted.txt"
grep -v '^#' "$KIT/requirements-trainer.txt" | grep . >"$wanted"
[ "$with_wandb" = 1 ] && echo wandb >>"$wanted"
if [ -n "$comfy_requirements" ] && [ -f "$comfy_requirements" ]; then
    # ComfyUI's own pins of the packages the kit takes for it (comfy-kitchen, av, ...)
    grep -iE '^(comfy-kitchen|comfy-aimdo|av|torchsde|simpleeval|blake3)\b' \
        "$comfy_requirements" >>"$wanted" || true
fi
say "downloading the trainer's packages"
fetch "$wanted" "$wheelhouse/trainer" --no-deps
fetch "$KIT/requirements-trainer-deps.txt" "$wheelhouse/trainer"
pure_comfy_kitchen "$wheelhouse/trainer"
drop_image_packages "$wheelhouse/trainer" fsspec  # datasets caps fsspec below the newest
cp "$wanted" "$wheelhouse/trainer/requirements.txt"

say "downloading dpd's dependencies (its venv sees the image's packages too)"
python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$REPO/pyproject.toml" >"$wheelhouse/dpd/requirements.txt"
fetch "$wheelhouse/dpd/requirements.txt" "$wheelhouse/dpd"
# kept although the image has them: dpd needs huggingface_hub 2 (the image: 1.33), and
# aiohttp and click at versions the image may predate
drop_image_packages "$wheelhouse/dpd" huggingface-hub aiohttp click

# ------------------------------------------------------------------ size
total=$(du -sb "$wheelhouse" | cut -f1)
limit=$((WHEELHOUSE_LIMIT_MIB * 1024 * 1024))
echo "wheelhouse: trainer $(du -sh "$wheelhouse/trainer" | cut -f1), dpd $(du -sh "$wheelhouse/dpd" | cut -f1), sources $(du -ch "$wheelhouse"/*.tar.xz 2>/dev/null | tail -1 | cut -f1)"
ls -S "$wheelhouse"/trainer/*.whl "$wheelhouse"/dpd/*.whl | sed -n 1,8p | while read -r f; do
    echo "  $(du -h "$f" | cut -f1)  $(basename "$f")"
done
echo "wheelhouse total: $(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }') MiB (limit $WHEELHOUSE_LIMIT_MIB MiB)"
if [ "$sources" = skip ]; then
    echo "wheelhouse: the sources are not included; bring them within the same limit"
fi
if [ "$total" -gt "$limit" ]; then
    echo "wheelhouse: over the limit" >&2
    exit 1
fi
