#!/usr/bin/env bash
# netd's metrics as Prometheus itself sees them: `promtool check metrics` on the text of
# GET /metrics and of the `metrics` command, then a real Prometheus (loopback, a temporary
# data directory, 1 s scrapes) scrapes netd, and its HTTP API must report
# netd_server_connections{server="echo"} equal to the clients this test holds open.
set -u

top_builddir=${top_builddir:-.}
NETD=$top_builddir/src/daemon/netd
NETCTL=$top_builddir/src/ctl/netctl
[[ -x $NETD && -x $NETCTL ]] || { echo "missing $NETD or $NETCTL"; exit 99; }
command -v python3 >/dev/null || { echo "SKIP: python3 is needed for the test clients"; exit 77; }
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    echo "SKIP: prometheus and promtool are not installed (Debian package 'prometheus';"
    echo "      scripts/dev.sh installs it)"
    exit 77
fi
scale=${CK_TIMEOUT_MULTIPLIER:-1}

dir=$(mktemp -d /tmp/netd-prom.XXXXXX)
pid= prom= clients=
passed=0
failed=0
cleanup() {
    [[ -n $prom ]] && kill "$prom" 2>/dev/null && wait "$prom" 2>/dev/null
    [[ -n $clients ]] && kill "$clients" 2>/dev/null
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
ctl() { "$NETCTL" -s "$dir/netd.sock" --timeout 5000 "$@"; }
# Waits up to N seconds (scaled) until COMMAND succeeds: no fixed sleeps.
wait_for() {
    local secs=$1 i
    shift
    for ((i = 0; i < secs * scale * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        python3 -c 'import time; time.sleep(0.1)'
    done
    return 1
}
http_get() { python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cat >"$dir/netd.json" <<EOF
{"control": {"path": "netd.sock"}, "metrics": {"host": "127.0.0.1", "port": 0},
 "shutdownTimeoutMs": 1000,
 "servers": [{"name": "echo", "port": 0, "host": "127.0.0.1"},
             {"name": "with \"quotes\" and \\\\", "port": 0, "host": "127.0.0.1"}]}
EOF
"$NETD" -t 2 -c "$dir/netd.json" 2>"$dir/netd.log" &
pid=$!
wait_for 5 ctl ping || { cat "$dir/netd.log"; echo "netd did not start"; exit 1; }
mport=$(sed -nE 's#.*metrics: serving http://127\.0\.0\.1:([0-9]+)/metrics.*#\1#p' "$dir/netd.log")
[[ $mport =~ ^[0-9]+$ ]] || { cat "$dir/netd.log"; echo "no metrics port in netd's log"; exit 1; }
port=$(ctl --json server echo | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["address"]["port"])')

# Hold N clients open (each proves it is served) until the fifo closes.
N=7
mkfifo "$dir/hold"
python3 - "$port" "$dir/hold" "$N" <<'EOF' &
import socket, sys
port, fifo, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cs = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for c in cs:
    c.sendall(b"x"); assert c.recv(1) == b"x"
open(fifo).read()
EOF
clients=$!
exec 3>"$dir/hold"
wait_for 5 bash -c "[[ \$('$NETCTL' -s '$dir/netd.sock' connections echo) == $N ]]" || fail "netd never counted $N clients"

# ---- promtool on both outputs (one generator; names, types, HELP, escaping)
if out=$(http_get "http://127.0.0.1:$mport/metrics" | promtool check metrics 2>&1); then ok; else fail "promtool on GET /metrics: $out"; fi
if out=$(ctl metrics | promtool check metrics 2>&1); then ok; else fail "promtool on netctl metrics: $out"; fi
http_get "http://127.0.0.1:$mport/metrics" | grep -q '^netd_server_connections{server="with \\"quotes\\" and \\\\"} 0$' && ok ||
    fail "label value not escaped: $(http_get "http://127.0.0.1:$mport/metrics" | grep quotes | head -1)"

# ---- a real Prometheus scrapes netd
pport=$(free_port)
cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: netd
    static_configs:
      - targets: ['127.0.0.1:$mport']
EOF
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$pport" >"$dir/prometheus.log" 2>&1 3>&- &
prom=$!
query() { # query EXPR -> the first result's value, or nothing
    python3 - "$pport" "$1" <<'EOF'
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:%s/api/v1/query?query=%s" % (sys.argv[1], urllib.parse.quote(sys.argv[2]))
r = json.load(urllib.request.urlopen(url, timeout=5))
res = r["data"]["result"]
print(res[0]["value"][1] if res else "")
EOF
}
got=
for ((i = 0; i < 60 * scale; i++)); do
    got=$(query 'netd_server_connections{server="echo"}' 2>/dev/null)
    [[ $got == "$N" ]] && break
    kill -0 "$prom" 2>/dev/null || break
    python3 -c 'import time; time.sleep(0.5)'
done
if [[ $got == "$N" ]]; then ok; else
    fail "Prometheus reports netd_server_connections{server=\"echo\"} = [$got], expected $N"
    tail -20 "$dir/prometheus.log"
fi
check_query() { # check_query DESCRIPTION EXPR EXPECTED
    local v
    v=$(query "$2" 2>/dev/null)
    [[ $v == "$3" ]] && ok || fail "$1: $2 = [$v], expected [$3]"
}
check_query "the scrape is up" 'up{job="netd"}' 1
check_query "accepted, as netd counts it" 'netd_server_accepted_total{server="echo"}' "$N"
check_query "no series with an id label" 'count(netd_server_connections{id!=""})' ""
check_query "build info" 'netd_build_info' 1

# The clients go: Prometheus sees 0 within a few scrapes.
exec 3>&-
wait "$clients" 2>/dev/null
clients=
for ((i = 0; i < 30 * scale; i++)); do
    got=$(query 'netd_server_connections{server="echo"}' 2>/dev/null)
    [[ $got == 0 ]] && break
    python3 -c 'import time; time.sleep(0.5)'
done
[[ $got == 0 ]] && ok || fail "after the clients left Prometheus still reports [$got]"

echo "prometheus: $passed passed, $failed failed"
((failed == 0))
