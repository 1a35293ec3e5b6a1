# SPDX-License-Identifier: MIT
# What the shell suites (test_*.sh) share, sourced after `set -u`: NETD and NETCTL from
# top_builddir, the pass/fail/skip tally with check and contains, and wait_for.
top_builddir=${top_builddir:-.}
NETD=$(readlink -f "$top_builddir/src/daemon/netd")
NETCTL=$(readlink -f "$top_builddir/src/ctl/netctl")
[[ -x $NETD && -x $NETCTL ]] || { echo "missing $NETD or $NETCTL"; exit 99; }
scale=${CK_TIMEOUT_MULTIPLIER:-1}

passed=0
failed=0
skipped=0
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIP: $*"; }
check() { # check DESCRIPTION EXPECTED ACTUAL
    if [[ "$2" == "$3" ]]; then ok; else fail "$1: expected [$2], got [$3]"; fi
}
contains() { # contains DESCRIPTION NEEDLE TEXT
    if [[ "$3" == *"$2"* ]]; then ok; else fail "$1: [$2] not in: $3"; fi
}

# Waits up to 5 s (times CK_TIMEOUT_MULTIPLIER) until COMMAND succeeds: no fixed sleeps.
wait_for() {
    local i
    for ((i = 0; i < 100 * scale; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    return 1
}
