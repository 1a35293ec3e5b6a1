#!/usr/bin/env bash
# What a Prometheus scrape costs netd with many connections open, and whether it stalls the
# data plane. One netd (echo server, metrics on loopback) holds CONNS idle connections
# (bench/netload idle); then:
#   1. SCRAPES scrapes one after the other: the time per scrape as a client sees it
#      (request to last byte), and netd's CPU per scrape (process_cpu_seconds_total);
#   2. the echo's latency (netload pingpong, 10 connections x 64 B) without scraping and
#      while a scraper fetches /metrics every 100 ms, ROUNDS times each, alternating.
#
#   bench/scrape.sh BUILDDIR     environment: CONNS (10000), SCRAPES (50), DURATION (5),
#                                ROUNDS (3), THREADS (2), KEEP (1: keep the work directory)
set -u
CONNS=${CONNS:-10000}
SCRAPES=${SCRAPES:-50}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
KEEP=${KEEP:-0}
BUILD=$(cd "${1:?usage: scrape.sh BUILDDIR}" && pwd)
NETD=$BUILD/src/daemon/netd
NETLOAD=$BUILD/bench/netload
[ -x "$NETLOAD" ] || make -C "$BUILD" bench/netload >&2 || exit 2
[ -x "$NETD" ] || { echo "build netd first" >&2; exit 2; }
command -v curl >/dev/null || { echo "scrape.sh needs curl" >&2; exit 2; }
ulimit -n 20000 2>/dev/null || ulimit -Sn 20000 2>/dev/null
[ "$(ulimit -n)" -ge $((CONNS + 500)) ] || { echo "open-file limit $(ulimit -n) < $CONNS + 500" >&2; exit 2; }

work=$(mktemp -d /tmp/netd-scrape.XXXXXX)
pid= idle= scraper=
cleanup() {
    for p in $scraper $idle $pid; do kill "$p" 2>/dev/null; done
    for p in $scraper $idle $pid; do wait "$p" 2>/dev/null; done
    if [ "$KEEP" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/netd.json" <<EOF
{"control": {"path": "$work/netd.sock"}, "metrics": {"port": 0}, "shutdownTimeoutMs": 1000,
 "servers": [{"name": "echo", "port": $port, "host": "127.0.0.1"}]}
EOF
"$NETD" -t "$THREADS" -c "$work/netd.json" 2>"$work/netd.log" &
pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/netd.log" && break; sleep 0.05; done
mport=$(sed -nE 's#.*metrics: serving http://127\.0\.0\.1:([0-9]+)/metrics.*#\1#p' "$work/netd.log")
[ -n "$mport" ] || { cat "$work/netd.log"; exit 1; }
url=http://127.0.0.1:$mport/metrics

"$NETLOAD" idle "127.0.0.1:$port" -c "$CONNS" -d 3600 >"$work/idle.out" 2>&1 &
idle=$!
while kill -0 "$idle" 2>/dev/null && ! grep -q '^ready' "$work/idle.out"; do sleep 0.1; done
grep '^ready' "$work/idle.out" >&2 || { cat "$work/idle.out"; exit 1; }
open=$(curl -s "$url" | sed -n 's/^netd_server_connections{server="echo"} //p')
echo "netd holds $open connections on echo" >&2

field() { sed -nE "s/.* $1=([0-9.]+).*/\1/p"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
cpu() { curl -s "$url" | sed -n 's/^process_cpu_seconds_total //p'; }

# ---- 1. scrapes one after the other
cpu0=$(cpu)
: >"$work/times"
for _ in $(seq "$SCRAPES"); do
    curl -s -o "$work/last.txt" -w '%{time_total}\n' "$url" >>"$work/times"
done
cpu1=$(cpu)
bytes=$(wc -c <"$work/last.txt")
scrape_ms=$(awk '{ print $1 * 1000 }' "$work/times" | median)
scrape_max=$(awk '{ print $1 * 1000 }' "$work/times" | sort -n | tail -1)
cpu_ms=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$SCRAPES" 'BEGIN { printf "%.2f", (b - a) * 1000 / (n + 1) }')

# ---- 2. echo latency with and without a scraper every 100 ms
: >"$work/plain"
: >"$work/scraped"
for _ in $(seq "$ROUNDS"); do
    "$NETLOAD" pingpong "127.0.0.1:$port" -c 10 -s 64 -d "$DURATION" -w 1 | tail -1 >>"$work/plain"
    (while :; do curl -s -o /dev/null "$url"; sleep 0.1; done) &
    scraper=$!
    "$NETLOAD" pingpong "127.0.0.1:$port" -c 10 -s 64 -d "$DURATION" -w 1 | tail -1 >>"$work/scraped"
    kill "$scraper" 2>/dev/null
    wait "$scraper" 2>/dev/null
    scraper=
done
p99_plain=$(field p99_us <"$work/plain" | median)
p99_scraped=$(field p99_us <"$work/scraped" | median)
p50_plain=$(field p50_us <"$work/plain" | median)
p50_scraped=$(field p50_us <"$work/scraped" | median)
rps_plain=$(field reqs_per_s <"$work/plain" | median)
rps_scraped=$(field reqs_per_s <"$work/scraped" | median)
max_plain=$(field max_us <"$work/plain" | median)
max_scraped=$(field max_us <"$work/scraped" | median)

printf '%s connections open, netd -t %s, %s scrapes of %s bytes\n\n' "$open" "$THREADS" "$SCRAPES" "$bytes"
printf '| scrape | median | max | netd CPU per scrape |\n|---|---|---|---|\n'
printf '| GET /metrics | %.1f ms | %.1f ms | %s ms |\n\n' "$scrape_ms" "$scrape_max" "$cpu_ms"
printf '| echo 10x64B (medians of %s runs) | req/s | p50 | p99 | max |\n|---|---|---|---|---|\n' "$ROUNDS"
printf '| no scraping | %.0f | %.1f us | %.1f us | %.0f us |\n' "$rps_plain" "$p50_plain" "$p99_plain" "$max_plain"
printf '| scraped every 100 ms | %.0f | %.1f us | %.1f us | %.0f us |\n' "$rps_scraped" "$p50_scraped" "$p99_scraped" "$max_scraped"
