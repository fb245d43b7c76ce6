#!/usr/bin/env bash
# Prepares what the GPU conformance kit installs on a GPU machine that has no network. Run
# it where the package registry can be reached, then carry bench/gpu/wheelhouse/ along.
#
#   bench/gpu/build_wheelhouse.sh [--sources-from TARBALL | --skip-sources] [--with-wandb]
#
# Writes bench/gpu/wheelhouse/ (ignored by git):
#   trainer/   wheels of what diffusion-pipe needs beyond the GPU image
#              (requirements-trainer.txt, resolved with dependencies, minus
#              image-packages.txt), and their requirements.txt
#   dpd/       wheels of dpd's own dependencies (pyproject.toml) the image lacks, ditto
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

pins_of_image() {  # constraints: the image's known versions
    grep -v '^#' "$KIT/image-packages.txt" | grep '==' || true
}

names_of_image() {
    grep -v '^#' "$KIT/image-packages.txt" | sed 's/==.*//' | grep . || true
}

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
    # Only what training imports: no history, tests, CI or pictures of the submodules.
    tar -cJf "$wheelhouse/diffusion-pipe-$DIFFUSION_PIPE_COMMIT.tar.xz" -C "$src" \
        --exclude=.git --exclude='.github' --exclude='submodules/*/tests' \
        --exclude='submodules/*/tests-unit' --exclude='submodules/HunyuanVideo/assets' \
        --exclude='submodules/*/*.png' --exclude='submodules/*/*.jpg' .
    comfy_requirements="$src/submodules/ComfyUI/requirements.txt"
}

# ------------------------------------------------------------------ wheels
build_deepspeed() {
    say "building DeepSpeed $DEEPSPEED_VERSION's wheel (pure Python, ops built at run time)"
    DS_BUILD_OPS=0 python3 -m pip wheel --quiet --no-deps --wheel-dir "$scratch/built" \
        "deepspeed==$DEEPSPEED_VERSION" >/dev/null
}

# resolve REQUIREMENTS OUTDIR: resolve with dependencies for the target, keep what the image
# lacks, download those wheels, and write OUTDIR/requirements.txt (exact pins).
resolve() {
    local wanted="$1" out="$2" report="$scratch/report-$(basename "$2").json"
    pins_of_image >"$scratch/constraints.txt"
    python3 -m pip install --quiet --dry-run --ignore-installed --report "$report" \
        --target "$scratch/target" "${target[@]}" --find-links "$scratch/built" \
        -c "$scratch/constraints.txt" -r "$wanted"
    names_of_image >"$scratch/image-names.txt"
    python3 - "$report" "$scratch/image-names.txt" >"$out/requirements.txt" <<'PY'
import json, re, sys
report = json.load(open(sys.argv[1]))
image = {re.sub(r"[-_.]+", "-", n.strip().lower()) for n in open(sys.argv[2]) if n.strip()}
for item in report["install"]:
    meta = item["metadata"]
    name = re.sub(r"[-_.]+", "-", meta["name"].lower())
    if name not in image:
        print(f"{name}=={meta['version']}")
PY
    python3 -m pip download --quiet --no-deps "${target[@]}" --find-links "$scratch/built" \
        --dest "$out" -r "$out/requirements.txt"
    # comfy-kitchen ships a pure-Python wheel beside 60+ MB of CUDA kernels; take the former
    if grep -q '^comfy-kitchen==' "$out/requirements.txt"; then
        rm -f "$out"/comfy_kitchen-*.whl
        python3 -m pip download --quiet --no-deps --only-binary=:all: --platform any \
            --python-version 3.12 --dest "$out" "$(grep '^comfy-kitchen==' "$out/requirements.txt")"
    fi
}

comfy_requirements=""
fetch_sources
build_deepspeed

wanted="$scratch/trainer-wanted.txt"
grep -v '^#' "$KIT/requirements-trainer.txt" | grep . >"$wanted"
[ "$with_wandb" = 1 ] && echo wandb >>"$wanted"
if [ -n "$comfy_requirements" ] && [ -f "$comfy_requirements" ]; then
    # ComfyUI's own pins of the packages the kit takes for it (comfy-kitchen, av, ...)
    grep -iE '^(comfy-kitchen|comfy-aimdo|av|torchsde|simpleeval|blake3)\b' \
        "$comfy_requirements" >>"$wanted" || true
fi
say "resolving the trainer's packages"
resolve "$wanted" "$wheelhouse/trainer"

say "resolving dpd's dependencies"
python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$REPO/pyproject.toml" >"$scratch/dpd-wanted.txt"
resolve "$scratch/dpd-wanted.txt" "$wheelhouse/dpd"

# ------------------------------------------------------------------ size
total=$(du -sb "$wheelhouse" | cut -f1)
limit=$((WHEELHOUSE_LIMIT_MIB * 1024 * 1024))
echo "wheelhouse: trainer $(du -sh "$wheelhouse/trainer" | cut -f1), dpd $(du -sh "$wheelhouse/dpd" | cut -f1), sources $(du -ch "$wheelhouse"/*.tar.xz 2>/dev/null | tail -1 | cut -f1)"
ls -S "$wheelhouse"/trainer/*.whl "$wheelhouse"/dpd/*.whl | head -8 | while read -r f; do
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
