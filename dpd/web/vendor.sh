#!/bin/sh
# Refresh the dashboard's vendored libraries at the pinned versions below.
#
# A maintainer's tool, never run at install time: the files it writes under static/vendor/ are
# committed and shipped as package data, so installing dpd needs no Node and no network.
# It needs npm (only `npm pack`, which fetches a package's published tarball) and sha256sum.
# Bump a version here, run it, look at the diff, run the browser tests, commit.
set -eu

PREACT=11.2.0
HTM=3.1.1
UPLOT=1.6.32

here=$(cd "$(dirname "$0")" && pwd)
out="$here/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

unpack() {  # unpack NAME VERSION -> $work/NAME/package
    (cd "$work" && npm pack --silent "$1@$2" >/dev/null)
    mkdir -p "$work/$1"
    tar -xzf "$work/$1-$2.tgz" -C "$work/$1"
}

unpack preact "$PREACT"
unpack htm "$HTM"
unpack uplot "$UPLOT"

mkdir -p "$out"
cp "$work/preact/package/dist/preact.mjs" "$out/preact.mjs"
# The hooks module imports the bare specifier "preact"; browsers resolve only paths (an import
# map would have to be an inline script, which the CSP forbids), so point it at the file.
sed 's#from"preact"#from"./preact.mjs"#g' "$work/preact/package/hooks/dist/hooks.mjs" > "$out/hooks.mjs"
grep -q 'from"./preact.mjs"' "$out/hooks.mjs" || { echo "hooks.mjs import not rewritten" >&2; exit 1; }
cp "$work/htm/package/dist/htm.mjs" "$out/htm.mjs"
cp "$work/uplot/package/dist/uPlot.iife.min.js" "$out/uPlot.iife.min.js"
cp "$work/uplot/package/dist/uPlot.min.css" "$out/uPlot.min.css"
cp "$work/preact/package/LICENSE" "$out/LICENSE.preact"
cp "$work/htm/package/LICENSE" "$out/LICENSE.htm"
cp "$work/uplot/package/LICENSE" "$out/LICENSE.uplot"

{
    echo "# Vendored by dpd/web/vendor.sh; sha256 of each shipped file."
    echo "preact $PREACT"
    echo "htm $HTM"
    echo "uplot $UPLOT"
    (cd "$out" && sha256sum preact.mjs hooks.mjs htm.mjs uPlot.iife.min.js uPlot.min.css)
} > "$out/VERSIONS"
echo "vendored into $out:"
cat "$out/VERSIONS"
