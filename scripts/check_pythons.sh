#!/usr/bin/env bash
# Prove the set-up on every supported Python this machine has: for each one, copy the working
# tree to a fresh folder, let scripts/env.sh create .venv/ there from scratch with that Python
# (PYTHON=...), and run a smoke test in it:
#   - import torch, jupyter_book and nbgrader, at the pinned versions;
#   - chapter 3's references against PyTorch (tests/test_ref_ch03_self_attention.py);
#   - grade chapter 3's source notebook, handed in as a student's submission: full marks.
# Then print a table. Too slow for every CI run (each Python installs its own environment).
#
#     bash scripts/check_pythons.sh                      # every Python found (see find_pythons)
#     bash scripts/check_pythons.sh /usr/bin/python3.11  # only these
#
# Pythons are looked for on PATH, under pyenv and in /usr/bin and /usr/local/bin. Before each
# set-up, `pip download` puts that Python's wheels into a wheel cache (WHEELHOUSE, by default
# ~/.cache/attention-course/wheels) that the set-up then finds through PIP_FIND_LINKS: each
# wheel is downloaded once, whatever the number of Pythons or runs (torch's CUDA libraries are
# shared by all of them). pip's own HTTP cache would not do: it keeps nothing from a server or
# proxy that sends no caching headers. The environments are deleted after their test unless
# KEEP=1; CHECK_DIR chooses where they are made (a new folder in /tmp by default).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK_DIR="${CHECK_DIR:-$(mktemp -d /tmp/check-pythons.XXXXXX)}"
WHEELHOUSE="${WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/attention-course/wheels}"
mkdir -p "$WHEELHOUSE"
export PIP_FIND_LINKS="$WHEELHOUSE${PIP_FIND_LINKS:+ $PIP_FIND_LINKS}"
ASSIGNMENT="ch03_self_attention"

# The Pythons scripts/env.sh would accept, by the locks in requirements/.
supported=" $(cd "$ROOT/requirements" && ls lock-py3.*.txt | sed 's/^lock-py//; s/\.txt$//' |
    tr '\n' ' ')"

find_pythons() { # candidate interpreters, one per line
    local minor dir
    for minor in $supported; do
        command -v "python$minor" || true
    done
    command -v python3 || true
    for dir in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/*/bin /usr/bin /usr/local/bin; do
        ls "$dir"/python3.* 2>/dev/null | grep -E '/python3\.[0-9]+$' || true
    done
}

# "version<TAB>interpreter" for each supported CPython, one per interpreter, oldest first.
describe() {
    "$1" -I -c 'import platform, sys
if platform.python_implementation() == "CPython":
    print("%s\t%s" % (platform.python_version(), sys.executable))' 2>/dev/null
}
pythons() {
    local candidate version exe
    for candidate in "$@"; do
        IFS=$'\t' read -r version exe < <(describe "$candidate") || continue
        [[ "$supported" == *" ${version%.*} "* ]] && echo -e "$version\t$(realpath "$exe")"
    done | sort -u -t$'\t' -k2,2 | sort -V
}

copy_tree() { # the working tree as it is (tracked and untracked files, not the ignored ones)
    mkdir -p "$2"
    (cd "$1" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' path; do [ -e "$path" ] && printf '%s\0' "$path"; done |
        tar --null -T - -cf -) | tar -C "$2" -xf -
}

# Runs in the copy, with .venv/ active: prints what it checks, fails on the first problem.
SMOKE='
set -euo pipefail
python - <<PYTHON
import importlib.metadata as metadata
import jupyter_book, nbgrader, torch
for name in ("torch", "jupyter-book", "nbgrader"):
    print(name, metadata.version(name))
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
print("torch built for CUDA:", torch.version.cuda)
PYTHON
python -m pytest -q -x -p no:cacheprovider tests/test_ref_ch03_self_attention.py
submitted="$(mktemp -d)"
trap "rm -rf $submitted" EXIT
mkdir -p "$submitted/student/$ASSIGNMENT"
cp "exercises/source/$ASSIGNMENT/$ASSIGNMENT.ipynb" "$submitted/student/$ASSIGNMENT/"
python -m autograder grade "$ASSIGNMENT" "$submitted" --json "$submitted/grades.json" \
    --out "$submitted/out" --workers 1
python - "$submitted/grades.json" <<PYTHON
import json, sys
records = json.load(open(sys.argv[1]))
score = sum(r["score"] for r in records)
best = sum(r["max_score"] for r in records)
print(f"grade of the source notebook: {score:g} / {best:g} over {len(records)} functions")
assert records and score == best, "the source notebook must get full marks"
PYTHON
'

if [ $# -gt 0 ]; then
    mapfile -t found < <(pythons "$@")
else
    mapfile -t found < <(pythons $(find_pythons | sort -u))
fi
fill_wheelhouse() { # $1: a Python; downloads only the wheels of its lock not yet there
    local lock="$ROOT/requirements/lock-py$2.txt" downloader="$CHECK_DIR/downloader"
    rm -rf "$downloader"
    "$1" -m venv "$downloader" &&
        "$downloader/bin/python" -m pip install --quiet --upgrade pip &&
        "$downloader/bin/python" -m pip download --quiet -d "$WHEELHOUSE" -r "$lock"
    local status=$?
    rm -rf "$downloader"
    return $status
}

if [ ${#found[@]} = 0 ]; then
    echo "No supported Python found (supported:$supported)." >&2
    exit 1
fi
wheelhouse_size() { du -sh "$WHEELHOUSE" | cut -f1; }
echo "Checking ${#found[@]} Pythons in $CHECK_DIR; wheels in $WHEELHOUSE ($(wheelhouse_size))"

ok() { if [ "$1" = 0 ]; then echo yes; else echo NO; fi; }
row() { printf '%-46s %-8s %8s %-6s %7s %-6s %7s  %s\n' "$@"; }
torch_build() { # as the smoke test printed it
    sed -n 's/^torch built for CUDA: None$/CPU/p; s/^torch built for CUDA: \(.*\)$/CUDA \1/p' "$1"
}

rows=() failures=0
for entry in "${found[@]}"; do
    IFS=$'\t' read -r version exe <<<"$entry"
    copy="$CHECK_DIR/python$version"
    rm -rf "$copy"
    copy_tree "$ROOT" "$copy"
    echo "== Python $version ($exe): download, log in $copy.download.log"
    start=$SECONDS
    fill_wheelhouse "$exe" "${version%.*}" >"$copy.download.log" 2>&1 ||
        echo "(download failed: the set-up downloads what it needs itself)"
    download_s=$((SECONDS - start))
    echo "== Python $version: set-up, log in $copy.setup.log"
    start=$SECONDS
    (cd "$copy" && env -u VIRTUAL_ENV PYTHON="$exe" bash -c 'source scripts/env.sh') \
        >"$copy.setup.log" 2>&1
    setup=$? setup_s=$((SECONDS - start))
    smoke=1 smoke_s=0
    if [ $setup = 0 ]; then
        echo "== Python $version: smoke test, log in $copy.smoke.log"
        start=$SECONDS
        (cd "$copy" && env -u VIRTUAL_ENV PYTHON="$exe" ASSIGNMENT="$ASSIGNMENT" \
            bash -c "source scripts/env.sh && $SMOKE") >"$copy.smoke.log" 2>&1
        smoke=$? smoke_s=$((SECONDS - start))
    fi
    [ $setup = 0 ] && [ $smoke = 0 ] || failures=$((failures + 1))
    [ $setup = 0 ] || tail -n 20 "$copy.setup.log"
    [ $setup != 0 ] || [ $smoke = 0 ] || tail -n 20 "$copy.smoke.log"
    rows+=("$(row "$exe" "$version" "$download_s" "$(ok $setup)" "$setup_s" \
        "$([ $setup = 0 ] && ok $smoke || echo -)" "$smoke_s" \
        "$(torch_build "$copy.smoke.log" 2>/dev/null)")")
    [ "${KEEP:-0}" = 1 ] || rm -rf "$copy/.venv"
done

echo
row python version download set-up seconds smoke seconds torch
printf '%s\n' "${rows[@]}"
echo "(seconds: wall-clock; download: filling the wheel cache $WHEELHOUSE, now $(wheelhouse_size))"
exit $((failures > 0))
