# Sourced by the other scripts: pick a Python, create .venv/ from that Python's lock when it is
# missing or out of date, and put .venv/bin first on PATH (nbgrader runs `alembic` through PATH).
#
# The Python is the one named by PYTHON=/path/to/python, or else the newest supported CPython
# on PATH (python3.13 ... python3.10, python3, python). Supported are the versions that have a
# lock, requirements/lock-py3.X.txt (made by scripts/lock.sh from requirements.txt). A Python
# other than the one .venv/ was made with rebuilds .venv/; a changed lock reinstalls into it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"

# One tab-separated line about a CPython 3: minor version, version, the interpreter to make
# the virtual environment from (the base one, if this one is itself in a virtual environment),
# its base prefix, and the modules the set-up needs that this build lacks. Fails for the rest.
DESCRIBE='
import importlib.util, platform, sys
if platform.python_implementation() != "CPython":
    sys.exit(1)
in_venv = sys.prefix != sys.base_prefix
exe = getattr(sys, "_base_executable", sys.executable) if in_venv else sys.executable
needs = {"ensurepip": "venv", "_ssl": "ssl", "_sqlite3": "sqlite3", "_ctypes": "ctypes"}
missing = [name for module, name in needs.items() if importlib.util.find_spec(module) is None]
v = sys.version_info
fields = ["%d.%d" % v[:2], platform.python_version(), exe, sys.base_prefix, ",".join(missing)]
print("\t".join(fields))
'

supported_pythons() { # newest first, one per line
    local lock version
    for lock in "$ROOT"/requirements/lock-py3.*.txt; do
        version="${lock##*/lock-py}"
        echo "${version%.txt}"
    done | sort -rV
}

supported_in_words() { # "3.10, 3.11, 3.12 or 3.13"
    supported_pythons | sort -V | paste -sd, | sed 's/,/, /g; s/, \([^,]*\)$/ or \1/'
}

newer_than() { # whether version $1 is newer than version $2
    [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n 1)" = "$1" ]
}

# What is missing, and what provides it.
missing_hint() { # $1: comma-separated modules, $2: minor version, $3: interpreter
    local hint="lacks the modules ${1//,/, }"
    if [[ ",$1," == *",venv,"* && "$3" == /usr/bin/* ]]; then
        hint+=": ask an administrator for \`apt-get install python$2-venv\`"
    elif [[ "$3" != /usr/bin/* ]]; then
        hint+=" (a build from source without libssl-dev, libsqlite3-dev or libffi-dev)"
    fi
    echo "$hint"
}

# Sets PY_MINOR, PY_VERSION, PY_EXE and PY_BASE; PY_NOTES says what was passed over and why.
pick_python() {
    local supported candidates=() candidate line minor version exe base missing name
    supported="$(supported_pythons | tr '\n' ' ')"
    PY_VERSION="" PY_NOTES=""
    if [ -n "${PYTHON:-}" ]; then
        candidates=("$PYTHON")
    else
        for minor in $supported; do
            candidates+=("python$minor")
        done
        candidates+=(python3 python)
    fi
    local seen=" " path
    for candidate in "${candidates[@]}"; do
        if ! path="$(command -v "$candidate" 2>/dev/null)"; then
            [ -z "${PYTHON:-}" ] || PY_NOTES+="  $candidate: not found"$'\n'
            continue
        fi
        path="$(readlink -f "$path" 2>/dev/null || echo "$path")"
        [[ "$seen" != *" $path "* ]] || continue # python3 is often python3.X under another name
        seen+="$path "
        if ! line="$("$candidate" -I -c "$DESCRIBE" 2>/dev/null)"; then
            PY_NOTES+="  $(command -v "$candidate"): is not a working CPython 3"$'\n'
            continue
        fi
        IFS=$'\t' read -r minor version exe base missing <<<"$line"
        name="$(command -v "$candidate")"
        [ "$name" = "$exe" ] || name+=" ($exe)"
        if [[ " $supported " != *" $minor "* ]]; then
            PY_NOTES+="  $name: Python $version, not supported"$'\n'
        elif [ -n "$missing" ]; then
            PY_NOTES+="  $name: Python $version $(missing_hint "$missing" "$minor" "$exe")"$'\n'
        elif [ -z "$PY_VERSION" ] || newer_than "$version" "$PY_VERSION"; then
            PY_MINOR="$minor" PY_VERSION="$version" PY_EXE="$exe" PY_BASE="$base"
        fi
    done
    if [ -z "$PY_VERSION" ]; then
        [ -n "$PY_NOTES" ] || PY_NOTES="  none of ${candidates[*]} is on PATH"$'\n'
        {
            if [ -n "${PYTHON:-}" ]; then
                echo "PYTHON=$PYTHON cannot be used."
            else
                echo "No usable Python found."
            fi
            echo "The course runs on CPython $(supported_in_words), with the venv, ssl, sqlite3"
            echo "and ctypes modules. Looked at:"
            printf '%s' "$PY_NOTES"
            echo "Install one, or name one: PYTHON=/path/to/python3.12 bash scripts/test.sh"
        } >&2
        exit 1
    fi
}

pick_python
LOCK="requirements/lock-py$PY_MINOR.txt"
python_id="$PY_VERSION $PY_BASE"
wanted="$(sha256sum "$ROOT/$LOCK" | cut -d' ' -f1) $python_id"
echo "Python $PY_VERSION ($PY_EXE), environment in .venv/" >&2
if [ "$(sed -n 's/^# requirements.txt sha256: //p' "$ROOT/$LOCK")" != \
    "$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)" ]; then
    echo "warning: requirements.txt has changed since $LOCK was made; the environment follows" \
        "the lock until \`bash scripts/lock.sh\` makes it again." >&2
fi

if [ -e "$VENV" ]; then
    made_with="$("$VENV/bin/python" -I -c 'import platform, sys
print(platform.python_version(), sys.base_prefix)' 2>/dev/null || echo "a Python that is gone")"
    if [ "$made_with" != "$python_id" ]; then
        echo "Rebuilding .venv/, made with Python $made_with, for Python $python_id ..." >&2
        rm -rf "$VENV"
    fi
fi

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
    echo "Installing $LOCK into .venv/ (once; again when the lock or the Python changes) ..." >&2
    printf '%s' "$PY_NOTES" | grep -F 'lacks' >&2 || true
    if [ "$(uname -s)" = Linux ]; then
        echo "Where torch comes from PyPI, on Linux that is its CUDA build (several GB with its" \
            "libraries); PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu takes the CPU" \
            "build instead." >&2
    fi
    "$PY_EXE" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/$LOCK"
    echo "$wanted" >"$STAMP"
fi

export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
