#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The cost of handing connections between threads: one netd serves the same echo twice,
# once through the acceptor's leastconn handoff and once with reuseport (each worker
# accepts for itself, no handoff), and netload measures, side by side:
#   - connections per second (connect, 1-byte echo, close), and
#   - the latency of that whole cycle, whose difference is what the handoff adds between
#     accept and 'connection' (one mailbox hop).
#
#   bench/handoff.sh BUILDDIR        environment: DURATION (5), ROUNDS (3), THREADS (2)
set -u
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
BUILD=$(cd "${1:?usage: handoff.sh BUILDDIR}" && pwd)
NETD=$BUILD/src/daemon/netd
NETLOAD=$BUILD/bench/netload
[ -x "$NETD" ] && [ -x "$NETLOAD" ] || { echo "build netd and bench/netload first" >&2; exit 2; }

work=$(mktemp -d /tmp/netd-handoff.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_LC=$(free_port)
P_RP=$(free_port)
cat >"$work/netd.json" <<EOF
{"control": {"path": "$work/netd.sock"},
 "servers": [
  {"name": "leastconn", "port": $P_LC, "host": "127.0.0.1", "balance": "leastconn"},
  {"name": "reuseport", "port": $P_RP, "host": "127.0.0.1", "balance": "reuseport"}]}
EOF
"$NETD" -f -t "$THREADS" -c "$work/netd.json" 2>"$work/netd.log" &
pid=$!
for _ in $(seq 100); do
    "$BUILD/src/ctl/netctl" -s "$work/netd.sock" -q ping 2>/dev/null && break
    python3 -c 'import time; time.sleep(0.05)'
done

field() { sed -nE "s/.* $1=([0-9.]+).*/\1/p"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: >"$work/lc" && : >"$work/rp"
for r in $(seq "$ROUNDS"); do
    for which in lc rp; do
        port=$P_LC
        [ "$which" = rp ] && port=$P_RP
        "$NETLOAD" connect "127.0.0.1:$port" -c 32 -d "$DURATION" -w 1 | tail -1 >>"$work/$which"
    done
done
lc_rate=$(field conns_per_s <"$work/lc" | median)
rp_rate=$(field conns_per_s <"$work/rp" | median)
lc_p50=$(field p50_us <"$work/lc" | median)
rp_p50=$(field p50_us <"$work/rp" | median)
printf '| balance   | connections/s | p50 connect+echo+close (us) |\n|---|---|---|\n'
printf '| leastconn | %13.0f | %27.1f |\n| reuseport | %13.0f | %27.1f |\n' \
    "$lc_rate" "$lc_p50" "$rp_rate" "$rp_p50"
awk -v a="$lc_rate" -v b="$rp_rate" -v x="$lc_p50" -v y="$rp_p50" 'BEGIN {
    printf "handoff: %.2f of reuseport'\''s connection rate; %+.1f us at the median per connection\n", a / b, x - y }'
