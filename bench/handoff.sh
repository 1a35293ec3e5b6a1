#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The cost of handing connections between threads: one netd serves the same echo twice,
# once through a leastconn group (netd's default: the first worker accepts and hands each
# connection the policy gives another worker through that worker's mailbox) and once with
# reuseport (each worker accepts for itself, no handoff), and netload measures, side by
# side:
#   - connections per second (connect, 1-byte echo, close),
#   - netd's CPU time per connection (user + system, all threads, from /proc), and
#   - the latency of that whole cycle, whose difference is what the handoff adds.
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
CLK_TCK=$(getconf CLK_TCK)

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

# CPU time (user + system, all threads) of netd, in microseconds.
cpu_us() {
    local stat
    stat=$(cat "/proc/$pid/stat") || { echo 0; return; }
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- ${stat##*) }
    echo $(((${12} + ${13}) * 1000000 / CLK_TCK))
}
field() { sed -nE "s/.* $1=([0-9.]+).*/\1/p"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: >"$work/lc" && : >"$work/rp" && : >"$work/lc.cpu" && : >"$work/rp.cpu"
for _ in $(seq "$ROUNDS"); do
    for which in lc rp; do
        port=$P_LC
        [ "$which" = rp ] && port=$P_RP
        c0=$(cpu_us)
        line=$("$NETLOAD" connect "127.0.0.1:$port" -c 32 -d "$DURATION" -w 1 | tail -1)
        c1=$(cpu_us)
        echo "$line" >>"$work/$which"
        total=$(echo "$line" | field total_conns)
        awk -v c=$((c1 - c0)) -v n="$total" 'BEGIN { printf "%.2f\n", c / n }' >>"$work/$which.cpu"
    done
done
lc_rate=$(field conns_per_s <"$work/lc" | median)
rp_rate=$(field conns_per_s <"$work/rp" | median)
lc_p50=$(field p50_us <"$work/lc" | median)
rp_p50=$(field p50_us <"$work/rp" | median)
lc_cpu=$(median <"$work/lc.cpu")
rp_cpu=$(median <"$work/rp.cpu")
printf '| balance   | connections/s | CPU us per connection | p50 connect+echo+close (us) |\n'
printf '|---|---|---|---|\n'
printf '| leastconn | %13.0f | %21.2f | %27.1f |\n| reuseport | %13.0f | %21.2f | %27.1f |\n' \
    "$lc_rate" "$lc_cpu" "$lc_p50" "$rp_rate" "$rp_cpu" "$rp_p50"
awk -v a="$lc_rate" -v b="$rp_rate" -v c="$lc_cpu" -v d="$rp_cpu" -v x="$lc_p50" -v y="$rp_p50" 'BEGIN {
    printf "handoff: %.2f of reuseport'\''s connection rate (target >= 0.95), %.2fx its CPU per connection (target <= 1.2); %+.1f us at the median per connection\n", a / b, c / d, x - y }'
printf 'per round, leastconn/reuseport: rate'
paste -d ' ' <(field conns_per_s <"$work/lc") <(field conns_per_s <"$work/rp") |
    awk '{ printf " %.2f", $1 / $2 }'
printf '; CPU'
paste -d ' ' "$work/lc.cpu" "$work/rp.cpu" | awk '{ printf " %.2f", $1 / $2 }'
echo
