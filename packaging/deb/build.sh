#!/usr/bin/env bash
# Build dist/dpd_<version>_all.deb from this checkout, on Debian 12:
#   packaging/deb/build.sh [--out DIR] [--wheels DIR]
# Needs dpkg-deb, python3 and pip (for the bundled pure-Python wheels, fetched from the
# package index or taken from --wheels DIR with no network at all), and python3 with PyYAML
# and shtab (or shtab fetched like the wheels) to generate the shell completion. Runs as any user:
# ownership in the package is root:root (dpkg-deb --root-owner-group).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/dist"
wheels=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        *) echo "usage: $0 [--out DIR] [--wheels DIR]" >&2; exit 2 ;;
    esac
done

version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/dpd/__init__.py")"
[ -n "$version" ] || { echo "build.sh: no __version__ in dpd/__init__.py" >&2; exit 1; }
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
lib="$root/usr/lib/dpd"
doc="$root/usr/share/doc/dpd"
install -d "$root/DEBIAN" "$lib" "$doc" "$root/usr/bin" "$root/etc/dpd" \
    "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" \
    "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions"

# dpd itself: the package directory as the checkout has it, without bytecode.
cp -r "$repo/dpd" "$lib/dpd"

# Bundled libraries: pure-Python wheels only, so Architecture: all is the truth.
pip_args=(--target "$lib" --no-deps --no-compile --only-binary=:all: --platform any
          --implementation py --python-version 3.11 --disable-pip-version-check --root-user-action=ignore --quiet
          --requirement "$here/vendor.txt")
if [ -n "$wheels" ]; then
    pip_args+=(--no-index --find-links "$wheels")
fi
python3 -m pip install "${pip_args[@]}"
# pip's scripts, nvidia-ml-py's top-level example.py and tqdm's shell completion are not
# part of any library.
rm -rf "$lib/bin" "$lib/example.py" "$lib/tqdm/completion.sh"
find "$lib" \( -name __pycache__ -o -name '*.pyc' \) -prune -exec rm -rf {} +
rm -f "$lib/dpd/web/vendor.sh"  # a developer's tool (refreshes vendored JS), not the runtime
compiled="$(find "$lib" -name '*.so' -o -name '*.so.*' -o -name '*.pyd' | head -5)"
if [ -n "$compiled" ]; then
    echo "build.sh: compiled code in an Architecture: all package:" >&2
    echo "$compiled" >&2
    exit 1
fi

install -m 0755 "$here/dpd.launcher" "$root/usr/bin/dpd"
install -m 0644 "$repo/packaging/systemd/dpd.service" "$root/lib/systemd/system/dpd.service"
install -m 0644 "$repo/packaging/systemd/dpd.sysusers" "$root/usr/lib/sysusers.d/dpd.conf"
install -m 0644 "$repo/packaging/systemd/dpd.tmpfiles" "$root/usr/lib/tmpfiles.d/dpd.conf"
install -m 0644 "$repo/packaging/dpd.toml" "$root/etc/dpd/dpd.toml"
install -m 0644 "$here/copyright" "$doc/copyright"
gzip -9n < "$here/dpd.1" > "$root/usr/share/man/man1/dpd.1.gz"

# Shell completion for bash and zsh, generated from the parser of the dpd being packaged, so
# it always knows every command and option. shtab is a build dependency only.
build_deps="$work/build-deps"
if ! python3 -c 'import shtab' 2>/dev/null; then
    shtab_args=(--target "$build_deps" --no-deps --only-binary=:all: --quiet
                --disable-pip-version-check --root-user-action=ignore "shtab>=1.7")
    [ -n "$wheels" ] && shtab_args+=(--no-index --find-links "$wheels")
    python3 -m pip install "${shtab_args[@]}"
fi
for shell in bash zsh; do
    case "$shell" in
        bash) target="$root/usr/share/bash-completion/completions/dpd" ;;
        zsh) target="$root/usr/share/zsh/vendor-completions/_dpd" ;;
    esac
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$lib:$build_deps" python3 -m shtab --error-unimportable --shell="$shell" \
        --prog=dpd dpd.cli.build_parser > "$target"
    chmod 0644 "$target"
done
install -m 0644 "$repo/packaging/OPERATOR.md" "$doc/OPERATOR.md"
changelog_date="$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
printf 'dpd (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
    "$version" "$version" "dpd maintainers <dpd-maintainers@lists.dpd.dev>" "$changelog_date" \
    | gzip -9n > "$doc/changelog.gz"

for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
echo /etc/dpd/dpd.toml > "$root/DEBIAN/conffiles"

# Modes and times as lintian and reproducible builds expect.
find "$root" -path "$root/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
find "$lib" -type f -exec chmod 0644 {} +
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$size/" "$here/control.in" \
    > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum > DEBIAN/md5sums)
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb="$out/dpd_${version}_all.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
