#!/usr/bin/env bash
# Regenerate the locks, requirements/lock-py3.X.txt (one per supported Python), from the direct
# pins in requirements.txt. Run it after every change to requirements.txt:
#
#     bash scripts/lock.sh                           # keeps every locked version that still fits
#     bash scripts/lock.sh --upgrade                 # re-resolves all to the newest releases
#     bash scripts/lock.sh --upgrade-package jinja2  # only that one (any uv pip compile option)
#
# Each lock is resolved for the first release of its Python (3.X.0), so that every 3.X works,
# Debian 12's 3.11.2 included, on Linux x86_64 with glibc 2.28 or newer. A version already in
# a lock is kept while it still fits, so adding a pin changes only what that pin needs.
# Resolution uses uv (installed on first use into a cache folder) and PyPI's metadata: it needs
# none of the Pythons themselves. scripts/check_pythons.sh then proves each lock installs.
set -euo pipefail

PYTHONS="3.10 3.11 3.12 3.13" # scripts/env.sh accepts exactly the Pythons that have a lock
PLATFORM="x86_64-manylinux_2_28"
UV_VERSION="0.13.9"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/attention-course/uv-$UV_VERSION"
if [ ! -x "$TOOLS/bin/uv" ]; then
    echo "Installing uv $UV_VERSION into $TOOLS ..."
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi
UV="$TOOLS/bin/uv"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Drop the packages that only torch's Linux-only requirements bring (its CUDA libraries and
# triton): torch pins them itself, a CPU build of torch needs none, and they are platform-specific.
# Arguments: the compiled lock (with uv's "# via" notes), torch's universal resolution (with
# markers), the Python version, the hash of requirements.txt (scripts/env.sh checks it).
FILTER='
import re
import sys
import textwrap

lock_path, universal_path, version, made_from = sys.argv[1:5]
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


linux_only = set()
for line in open(universal_path):
    pin, _, marker = line.partition(";")
    if NAME.match(pin) and "linux" in marker:
        linux_only.add(norm(NAME.match(pin).group(0)))

blocks = []  # [name, lines, parents]
for line in open(lock_path):
    if NAME.match(line):
        blocks.append([norm(NAME.match(line).group(0)), [line], set()])
    elif blocks and line.startswith(" "):
        blocks[-1][1].append(line)
        via = re.sub(r"^\s*#\s*(via\b)?\s*", "", line).split()
        if via:
            blocks[-1][2].add(" ".join(via) if via[0] == "-r" else norm(via[0]))

dropped = set()
while True:
    more = {
        name
        for name, _, parents in blocks
        if name in linux_only and name not in dropped and parents <= dropped | {"torch"}
    }
    if not more:
        break
    dropped |= more

print(f"# Lock for CPython {version} (any {version}.x) on Linux x86_64, made by `bash scripts/lock.sh`")
print("# from requirements.txt: do not edit it, edit requirements.txt and run that command.")
print(f"# requirements.txt sha256: {made_from}")
left_out = "Left out: the CUDA libraries of torch, which torch itself pins on Linux and a CPU "
left_out += "build of torch does not need: " + ", ".join(sorted(dropped)) + "."
print(textwrap.fill(left_out, 96, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=0))
for name, lines, _ in blocks:
    if name not in dropped:
        sys.stdout.write("".join(lines))
'

grep -E '^torch *[=<>!~;]' requirements.txt >"$WORK/torch.in"
for version in $PYTHONS; do
    lock="requirements/lock-py$version.txt"
    echo "Locking $lock ..."
    "$UV" pip compile --quiet --universal --python-version "$version.0" --no-header \
        --no-annotate "$WORK/torch.in" -o "$WORK/torch-$version.txt"
    rm -f "$WORK/lock.txt"
    if [ -f "$lock" ]; then
        cp "$lock" "$WORK/lock.txt" # uv keeps the pins of an existing output file where it can
    fi
    if ! "$UV" pip compile --quiet --python-version "$version.0" --python-platform "$PLATFORM" \
        --no-header "$@" requirements.txt -o "$WORK/lock.txt"; then
        echo "No lock for Python $version (uv says why above). If a pin in requirements.txt has" \
            "no release for $version, mark it '; python_version >= \"3.11\"' (or newer) and add" \
            "the last release that supports $version, as requirements.txt does for 3.10." >&2
        exit 1
    fi
    python3 -c "$FILTER" "$WORK/lock.txt" "$WORK/torch-$version.txt" "$version" \
        "$(sha256sum requirements.txt | cut -d' ' -f1)" >"$WORK/final.txt"
    mv "$WORK/final.txt" "$lock"
done

# A Python taken off the list loses its lock, and with it its place in scripts/env.sh.
for lock in requirements/lock-py*.txt; do
    version="${lock#requirements/lock-py}"
    version="${version%.txt}"
    if [[ " $PYTHONS " != *" $version "* ]]; then
        echo "Removing $lock ($version is not in PYTHONS)"
        rm "$lock"
    fi
done
git status --short requirements/ requirements.txt
