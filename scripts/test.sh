#!/usr/bin/env bash
# Run the whole test suite: references against PyTorch, batteries, sandbox, exercises,
# nbgrader round trips, and the book build (warnings and cell errors fail it).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# The grader's strongest isolation needs bubblewrap, and the book's browser tests headless
# Chromium (Debian packages). Only root can install them, and bubblewrap needs unprivileged
# user namespaces when it runs as anyone else. Install them where we can; elsewhere, say what
# to ask an administrator for.
find_bwrap() { PATH=/usr/bin:/bin:/usr/local/bin command -v bwrap || true; } # as the grader does

bwrap_fails() { # prints why bubblewrap cannot start a sandbox like the grader's; silent if it can
    local as_user=() out
    [ "$(id -u)" = 0 ] || as_user=(--unshare-user)
    out="$("$(find_bwrap)" "${as_user[@]}" --unshare-pid --unshare-net --die-with-parent \
        --ro-bind / / --proc /proc --dev /dev true 2>&1)" && return 0
    echo "${out:-exit status $?}"
}

userns_setting() { # the sysctl that turns on unprivileged user namespaces, where one is off
    if [ "$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null)" = 0 ]; then
        echo "kernel.unprivileged_userns_clone=1"
    elif [ "$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns 2>/dev/null)" = 1 ]; then
        echo "kernel.apparmor_restrict_unprivileged_userns=0"
    elif [ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null)" = 0 ]; then
        echo "user.max_user_namespaces=15000"
    fi
}

missing=()
[ -n "$(find_bwrap)" ] || missing+=(bubblewrap)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 ||
        echo "warning: could not install ${missing[*]} with apt-get" >&2
fi
if [ "$(id -u)" = 0 ]; then
    without_it="Until then, the grader falls back to its weaker process level, with a warning."
else
    without_it="Until then, the grader refuses to grade without --accept-weak-isolation, which runs
student code as your own user (README.md, \"What the isolation protects\")."
fi
if [ -z "$(find_bwrap)" ]; then
    cat >&2 <<MESSAGE
warning: bubblewrap (bwrap) is not installed, and installing it needs root. Ask an administrator:
    apt-get install bubblewrap    # Debian, Ubuntu; on Fedora: dnf install bubblewrap
$without_it
MESSAGE
elif why="$(bwrap_fails)" && [ -n "$why" ]; then
    setting="$(userns_setting)"
    if [ -n "$setting" ] && [ "$(id -u)" != 0 ]; then
        cat >&2 <<MESSAGE
warning: bubblewrap cannot start a sandbox: unprivileged user namespaces are turned off on this
machine. Ask an administrator:
    sysctl -w $setting
    echo $setting > /etc/sysctl.d/60-bubblewrap.conf    # keeps it after a reboot
$without_it
MESSAGE
    else
        cat >&2 <<MESSAGE
warning: bubblewrap cannot start a sandbox here (bwrap says: ${why//$'\n'/ }).
The kernel, or the security policy of a container this runs in, refuses the namespaces it needs.
$without_it
MESSAGE
    fi
fi
if [ ! -x /usr/bin/chromium ]; then
    cat >&2 <<MESSAGE
warning: chromium is not installed, and installing it needs root. Ask an administrator:
    apt-get install chromium
Until then, the browser tests of the book are skipped.
MESSAGE
fi

ruff format --check .
ruff check .
# Both cores (pytest-xdist); the book is built by one worker at a time (tests/conftest.py).
python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
