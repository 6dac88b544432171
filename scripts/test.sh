#!/usr/bin/env bash
# Run the whole test suite: references against PyTorch, batteries, sandbox, exercises,
# nbgrader round trips, and the book build (warnings and cell errors fail it).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# The grader's strongest isolation needs bubblewrap, and the book's browser test headless
# Chromium (Debian packages); install them where we can.
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 ||
            echo "warning: could not install ${missing[*]}" >&2
    fi
    command -v bwrap >/dev/null 2>&1 ||
        echo "warning: bubblewrap (bwrap) is not installed; sandbox tests run at the weaker level" >&2
    [ -x /usr/bin/chromium ] ||
        echo "warning: chromium is not installed; the browser tests of the book are skipped" >&2
fi

ruff format --check .
ruff check .
# Both cores (pytest-xdist); the book is built by one worker at a time (tests/conftest.py).
python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
