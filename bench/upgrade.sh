#!/usr/bin/env bash
# The live upgrade's cost: how long `netctl upgrade` takes and the longest time any
# connection waits for an echo across it, at 1,000 and 10,000 connections.
#
#   bench/upgrade.sh BUILDDIR        (or `make bench-upgrade` from the build directory)
#
# Environment: SIZES ("1000 10000"), ROUNDS (3), NETD_THREADS (2).
set -u
BUILDDIR=$(cd "${1:?usage: upgrade.sh BUILDDIR}" && pwd)
BENCHDIR=$(cd "$(dirname "$0")" && pwd)
SIZES=${SIZES:-"1000 10000"}
ROUNDS=${ROUNDS:-3}
NETD_THREADS=${NETD_THREADS:-2}
NETD=$BUILDDIR/src/daemon/netd
UPGLOAD=$BUILDDIR/bench/upgload
[ -x "$UPGLOAD" ] || make -C "$BUILDDIR" bench/upgload >&2 || exit 2
ulimit -n 20000 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/netd-upgrade-bench.XXXXXX")
trap 'pkill -TERM -f "$WORK/ctl.sock" 2>/dev/null; rm -rf "$WORK"' EXIT

# The "new" binary: a copy of the real one behind libtool's wrapper.
REAL=$BUILDDIR/src/daemon/.libs/netd
[ -x "$REAL" ] || REAL=$NETD
cp "$REAL" "$WORK/netd-new"

printf '%-12s %-6s %10s %12s %14s %8s\n' connections round netd_ms request_ms max_stall_ms errors
for n in $SIZES; do
    for ((r = 1; r <= ROUNDS; r++)); do
        rm -f "$WORK/ctl.sock"
        echo '{"servers":[{"name":"echo","port":0,"host":"127.0.0.1"}]}' >"$WORK/netd.json"
        "$NETD" -c "$WORK/netd.json" -s "$WORK/ctl.sock" -t "$NETD_THREADS" 2>"$WORK/netd.log" &
        for _ in $(seq 100); do [ -S "$WORK/ctl.sock" ] && break; sleep 0.05; done
        port=$("$BUILDDIR/src/ctl/netctl" -s "$WORK/ctl.sock" --json server echo |
            sed -n 's/.*"port":\([0-9]*\).*/\1/p')
        line=$("$UPGLOAD" -p "$port" -s "$WORK/ctl.sock" -n "$n" -e "$WORK/netd-new" -w 1000 -a 1000)
        eval "$line"
        printf '%-12s %-6s %10s %12s %14s %8s\n' "$connections" "$r" "$netd_ms" "$request_ms" \
            "$max_stall_ms" "$errors"
        "$BUILDDIR/src/ctl/netctl" -s "$WORK/ctl.sock" shutdown >/dev/null 2>&1
        wait 2>/dev/null
        sleep 0.5
    done
done
