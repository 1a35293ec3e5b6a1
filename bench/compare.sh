#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# netd against Node's net module and against the limits, under the same load, one after the
# other.
#
#   bench/compare.sh BUILDDIR        (or `make bench` from the build directory)
#
# Starts netd (echo, proxy, and the same echo behind a leastconn and a reuseport group),
# the same servers written with Node (bench/node-echo.js, bench/node-proxy.js), the raw
# epoll echo (bench/echod: the limit of every echo row), a libevent bufferevent echo
# (bench/evecho: the peer of the memory row) and HAProxy (the peer of the proxy rows), runs
# bench/netload against each for every scenario, several rounds, and prints the medians:
# one table netd/node (first round's targets), one netd against the limits (second
# round's), and p50/p99/max latency, rate, CPU and errors of every server in every scenario.
#
# Environment: DURATION (s per run, 5), ROUNDS (3), WARMUP (s, 1), NETD_THREADS (2),
# NETLOAD_THREADS (1), CONNECT_CONNS (32), IDLE_CONNS (9000), IDLE_HOLD (s, 2),
# UPSTREAM (plain | node | netd: who serves the proxies' upstream echo, plain = bench/echod),
# HAPROXY (haproxy binary, "" skips it), HAPROXY_THREADS (2), HAPROXY_OPTIONS (extra
# `defaults` lines, e.g. "option splice-auto"), KEEP (1: keep the work directory with every
# raw result and log), NODE (node binary).
set -u

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
NETD_THREADS=${NETD_THREADS:-2}
NETLOAD_THREADS=${NETLOAD_THREADS:-1}
CONNECT_CONNS=${CONNECT_CONNS:-32}
IDLE_CONNS=${IDLE_CONNS:-9000}
IDLE_HOLD=${IDLE_HOLD:-2}
UPSTREAM=${UPSTREAM:-plain}
HAPROXY=${HAPROXY-haproxy}
HAPROXY_THREADS=${HAPROXY_THREADS:-2}
HAPROXY_OPTIONS=${HAPROXY_OPTIONS:-}
NODE=${NODE:-node}
KEEP=${KEEP:-0}

die() { echo "compare.sh: $*" >&2; exit 2; }
note() { echo "compare.sh: $*" >&2; }

[ $# -ge 1 ] || die "usage: compare.sh BUILDDIR"
BUILDDIR=$(cd "$1" && pwd) || die "no build directory $1"
BENCHDIR=$(cd "$(dirname "$0")" && pwd)
NETLOAD=$BUILDDIR/bench/netload
ECHOD=$BUILDDIR/bench/echod
EVECHO=$BUILDDIR/bench/evecho
NETD=$BUILDDIR/src/daemon/netd
CLK_TCK=$(getconf CLK_TCK)

for prog in netload echod evecho; do
    if [ ! -x "$BUILDDIR/bench/$prog" ]; then
        make -C "$BUILDDIR" "bench/$prog" >&2 || die "cannot build bench/$prog"
    fi
done
command -v "$NODE" >/dev/null || die "node not found (set NODE=)"
HAVE_NETD=1
[ -x "$NETD" ] || { note "$NETD not built: netd columns will read n/a"; HAVE_NETD=0; }
HAVE_HAPROXY=1
if [ -z "$HAPROXY" ] || ! command -v "$HAPROXY" >/dev/null; then
    note "haproxy not found (apt-get install haproxy, or set HAPROXY=): its rows read n/a"
    HAVE_HAPROXY=0
fi

# 9000 idle connections are 9000 descriptors in the client and as many in the server;
# children inherit this limit. Only ever raised: a higher limit is left as it is.
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt 20000 ]; then
    if ! ulimit -Sn 20000 2>/dev/null && ! ulimit -n 20000 2>/dev/null; then
        note "cannot raise the open-file limit to 20000 (it is $(ulimit -Sn), hard $(ulimit -Hn))"
    fi
fi
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 200)) ]; then
    note "open-file limit $(ulimit -n) is too low for $IDLE_CONNS idle connections: skipped"
    IDLE_CONNS=0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/netd-bench.XXXXXX")
PIDS=()
cleanup() {
    local p
    [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ "$KEEP" = 1 ]; then note "raw results kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------ servers

# free_port VAR: a port nobody listens on, below the ephemeral range so no client socket can
# hold it, and not handed out before. Sets VAR rather than printing, so that the record of
# ports handed out is not lost in a subshell.
USED_PORTS=" "
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
            USED_PORTS="$USED_PORTS$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
}

# Readiness is a successful connect, polled; gives up when the process dies or after 10 s.
wait_port() {
    local port=$1 pid=$2 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# start NAME CMD...: runs CMD in the background, logging to WORK/NAME.log; sets STARTED_PID.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

start_or_die() {
    local name=$1 port=$2
    shift 2
    start "$name" "$@"
    wait_port "$port" "$STARTED_PID" || { cat "$WORK/$name.log" >&2; die "$name did not start"; }
}

# Every server of the run: its pid and port per scenario family, by name.
declare -A PID PORT

free_port P_UP
for k in NODE_ECHO NODE_PROXY NETD_ECHO NETD_PROXY NETD_LC NETD_RP ECHOD ECHOD_N HAP; do
    free_port "P_$k"
done

start_netd() {
    local name=$1 config=$2 port=$3
    start "$name" "$NETD" -f -t "$NETD_THREADS" -c "$config"
    if ! wait_port "$port" "$STARTED_PID"; then
        note "$name did not start; its log:"
        tail -n 20 "$WORK/$name.log" >&2
        return 1
    fi
}

# netd_config DIR SERVERS...: a config in DIR/netd.json with its own control socket there.
netd_config() {
    local dir=$1 sep="" s
    shift
    mkdir -p "$dir"
    {
        printf '{"control":{"path":"%s/netd.sock"},\n "servers":[' "$dir"
        for s in "$@"; do printf '%s\n  %s' "$sep" "$s"; sep=","; done
        printf ']}\n'
    } >"$dir/netd.json"
}

# echo_entry PORT [NAME [BALANCE]]
echo_entry() {
    local balance=""
    [ -n "${3:-}" ] && balance=",\"balance\":\"$3\""
    echo "{\"name\":\"${2:-echo}\",\"port\":$1,\"host\":\"127.0.0.1\"$balance,\"handler\":{\"type\":\"echo\"}}"
}

proxy_entry() {
    echo "{\"name\":\"proxy\",\"port\":$1,\"host\":\"127.0.0.1\",\"handler\":{\"type\":\"proxy\",\"port\":$2,\"host\":\"127.0.0.1\"}}"
}

if [ "$UPSTREAM" = plain ]; then
    # The issue's "plain upstream echo": a bare epoll echo, the same for every proxy.
    start_or_die echod-upstream "$P_UP" "$ECHOD" "$P_UP"
elif [ "$UPSTREAM" = netd ] && [ "$HAVE_NETD" = 1 ]; then
    netd_config "$WORK/up" "$(echo_entry "$P_UP")"
    start_netd netd-upstream "$WORK/up/netd.json" "$P_UP" || die "upstream netd did not start"
else
    [ "$UPSTREAM" = node ] || note "UPSTREAM=$UPSTREAM is not available: using node"
    UPSTREAM=node
    start_or_die node-upstream "$P_UP" "$NODE" "$BENCHDIR/node-echo.js" "$P_UP"
fi

start_or_die node-echo "$P_NODE_ECHO" "$NODE" "$BENCHDIR/node-echo.js" "$P_NODE_ECHO"
PID[echo.node]=$STARTED_PID PORT[echo.node]=$P_NODE_ECHO
start_or_die node-proxy "$P_NODE_PROXY" "$NODE" "$BENCHDIR/node-proxy.js" "$P_NODE_PROXY" "$P_UP"
PID[proxy.node]=$STARTED_PID PORT[proxy.node]=$P_NODE_PROXY
# The raw epoll echo: one thread (the limit), and as many threads as netd has workers, to
# show what the second thread costs any server on these cores.
start_or_die echod "$P_ECHOD" "$ECHOD" "$P_ECHOD"
PID[echo.echod]=$STARTED_PID PORT[echo.echod]=$P_ECHOD
start_or_die echod-n "$P_ECHOD_N" "$ECHOD" "$P_ECHOD_N" "$NETD_THREADS"
PID[echo.echodN]=$STARTED_PID PORT[echo.echodN]=$P_ECHOD_N

if [ "$HAVE_HAPROXY" = 1 ]; then
    # HAProxy's plain TCP forwarding with its defaults (no splicing unless HAPROXY_OPTIONS
    # asks), nbthread like netd's workers; maxconn within the descriptor limit.
    cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread $HAPROXY_THREADS
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  $HAPROXY_OPTIONS
frontend bench
  bind 127.0.0.1:$P_HAP
  default_backend upstream
backend upstream
  server echo 127.0.0.1:$P_UP
EOF
    start haproxy "$HAPROXY" -db -f "$WORK/haproxy.cfg"
    if wait_port "$P_HAP" "$STARTED_PID"; then
        PID[proxy.haproxy]=$STARTED_PID PORT[proxy.haproxy]=$P_HAP
    else
        note "haproxy did not start; its log:"
        tail -n 5 "$WORK/haproxy.log" >&2
        HAVE_HAPROXY=0
    fi
fi

if [ "$HAVE_NETD" = 1 ]; then
    netd_config "$WORK/netd" "$(echo_entry "$P_NETD_ECHO")" \
        "$(proxy_entry "$P_NETD_PROXY" "$P_UP")" \
        "$(echo_entry "$P_NETD_LC" leastconn leastconn)" \
        "$(echo_entry "$P_NETD_RP" reuseport reuseport)"
    if start_netd netd "$WORK/netd/netd.json" "$P_NETD_ECHO" &&
        wait_port "$P_NETD_PROXY" "$STARTED_PID" && wait_port "$P_NETD_LC" "$STARTED_PID" &&
        wait_port "$P_NETD_RP" "$STARTED_PID"; then
        for sc in echo proxy lc rp; do PID[$sc.netd]=$STARTED_PID; done
        PORT[echo.netd]=$P_NETD_ECHO PORT[proxy.netd]=$P_NETD_PROXY
        PORT[lc.netd]=$P_NETD_LC PORT[rp.netd]=$P_NETD_RP
    else
        HAVE_NETD=0
    fi
fi

# ------------------------------------------------------------------------------ measurements

# CPU time (user + system, all threads) of a process, in microseconds.
cpu_us() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    # Fields after the ")" closing the command name: utime and stime are the 12th and 13th.
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- ${stat##*) }
    echo $(((${12} + ${13}) * 1000000 / CLK_TCK))
}

rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# The value of KEY in a netload result line.
field() {
    local key=$1 line=$2 kv
    for kv in $line; do
        case "$kv" in "$key="*) echo "${kv#*=}"; return ;; esac
    done
    echo "n/a"
}

# record SCENARIO SERVER METRIC VALUE: one round's value, kept for the median.
record() {
    echo "$4" >>"$WORK/r.$1.$2.$3"
}

# per OP_US COUNT: CPU microseconds per operation, or n/a.
per() {
    if [ "$2" != n/a ] && [ "$2" -gt 0 ]; then
        awk -v c="$1" -v n="$2" 'BEGIN { printf "%.2f", c / n }'
    else
        echo n/a
    fi
}

# run_load SCENARIO SERVER KEY MODE [NETLOAD OPTIONS...]: one closed-loop run against the
# port of KEY (family.server, as in PID and PORT), recorded under SERVER, with the server's
# CPU time over the whole run (warm-up included, and so are its operations in the totals).
# Servers that did not start are skipped.
run_load() {
    local sc=$1 srv=$2 key=$3 mode=$4 pid port c0 c1 line total
    shift 4
    pid=${PID[$key]:-} port=${PORT[$key]:-}
    [ -n "$pid" ] || return 0
    c0=$(cpu_us "$pid")
    line=$("$NETLOAD" "$mode" "127.0.0.1:$port" "$@" -t "$NETLOAD_THREADS" \
        -d "$DURATION" -w "$WARMUP" | tail -n 1)
    c1=$(cpu_us "$pid")
    echo "$sc $srv $line" >>"$WORK/raw.txt"
    local m
    for m in reqs_per_s:rps mb_per_s:mbs conns_per_s:cps p50_us:p50 p99_us:p99 max_us:max \
        errors:err; do
        record "$sc" "$srv" "${m#*:}" "$(field "${m%%:*}" "$line")"
    done
    total=$(field total_reqs "$line")
    [ "$total" = n/a ] && total=$(field total_conns "$line")
    record "$sc" "$srv" cpu "$(per $((c1 - c0)) "$total")"
    note "  $sc $srv: $(field reqs_per_s "$line") req/s $(field conns_per_s "$line") conn/s" \
        "$(field mb_per_s "$line") MB/s p99 $(field p99_us "$line") us," \
        "errors $(field errors "$line")"
}

# The server's RSS before, then the highest RSS seen while the connections are held; the
# growth divided by the connections that made it is the memory per connection.
run_idle() {
    local srv=$1 pid=$2 port=$3 out=$WORK/idle.out rss0 peak r lp ok line
    rss0=$(rss_kib "$pid")
    "$NETLOAD" idle "127.0.0.1:$port" -c "$IDLE_CONNS" -t "$NETLOAD_THREADS" -d "$IDLE_HOLD" \
        >"$out" &
    lp=$!
    LOAD_PID=$lp
    while kill -0 "$lp" 2>/dev/null && ! grep -q '^ready' "$out"; do sleep 0.05; done
    peak=0
    while kill -0 "$lp" 2>/dev/null; do
        r=$(rss_kib "$pid")
        [ "$r" -gt "$peak" ] && peak=$r
        sleep 0.1
    done
    wait "$lp"
    LOAD_PID=
    line=$(tail -n 1 "$out")
    echo "idle $srv rss0=$rss0 peak=$peak $line" >>"$WORK/raw.txt"
    ok=$(field ok "$line")
    if [ "$ok" != n/a ] && [ "$ok" -gt 0 ] && [ "$peak" -gt 0 ]; then
        record idle "$srv" kib "$(awk -v d=$((peak - rss0)) -v n="$ok" 'BEGIN { printf "%.2f", d / n }')"
        record idle "$srv" bytes "$(awk -v d=$((peak - rss0)) -v n="$ok" 'BEGIN { printf "%.0f", d * 1024 / n }')"
    fi
    record idle "$srv" err "$(field errors "$line")"
    note "  idle $srv: $ok/$IDLE_CONNS held, RSS $rss0 -> $peak KiB, errors $(field errors "$line")"
}

# Memory is measured on a fresh server each round: an allocator keeps what the previous
# round's connections freed, so a second run on the same process would grow by ~nothing.
idle_fresh() {
    local srv=$1 port pid
    free_port port
    case $srv in
    netd)
        netd_config "$WORK/idle-$round" "$(echo_entry "$port")"
        start_netd "netd-idle-$round" "$WORK/idle-$round/netd.json" "$port" || return
        ;;
    node) start "node-idle-$round" "$NODE" "$BENCHDIR/node-echo.js" "$port" ;;
    echod) start "echod-idle-$round" "$ECHOD" "$port" ;;
    evecho) start "evecho-idle-$round" "$EVECHO" "$port" ;;
    esac
    wait_port "$port" "$STARTED_PID" || { note "$srv (idle) did not start"; return; }
    pid=$STARTED_PID
    run_idle "$srv" "$pid" "$port"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

note "netd ${PID[echo.netd]:-n/a} (threads $NETD_THREADS), node echo ${PID[echo.node]}," \
    "node proxy ${PID[proxy.node]}, haproxy ${PID[proxy.haproxy]:-n/a}, upstream $UPSTREAM;" \
    "${ROUNDS} rounds of ${DURATION} s"
for ((round = 1; round <= ROUNDS; round++)); do
    note "round $round/$ROUNDS"
    if [ "$IDLE_CONNS" -gt 0 ]; then
        for srv in netd echod evecho node; do
            [ "$srv" = netd ] && [ "$HAVE_NETD" = 0 ] && continue
            idle_fresh "$srv"
        done
    fi
    for srv in netd echod echodN node; do
        run_load echo_small "$srv" "echo.$srv" pingpong -c 100 -s 64
    done
    for srv in netd echod node; do
        run_load echo_large "$srv" "echo.$srv" pingpong -c 10 -s 65536
    done
    for srv in netd echod node; do
        run_load connect "$srv" "echo.$srv" connect -c "$CONNECT_CONNS"
    done
    # The cost of the handoff: the same echo through a leastconn group (the acceptor hands
    # each connection to a worker) and a reuseport one (each worker accepts its own).
    run_load handoff leastconn lc.netd connect -c "$CONNECT_CONNS"
    run_load handoff reuseport rp.netd connect -c "$CONNECT_CONNS"
    for srv in netd node haproxy; do
        run_load proxy_small "$srv" "proxy.$srv" pingpong -c 100 -s 64
    done
    for srv in netd node haproxy; do
        run_load proxy_large "$srv" "proxy.$srv" pingpong -c 10 -s 65536
    done
done

# ------------------------------------------------------------------------------ tables

median() {
    local f=$WORK/r.$1.$2.$3
    [ -s "$f" ] || { echo n/a; return; }
    grep -v '^n/a$' "$f" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print "n/a";
              else if (NR % 2) print v[(NR + 1) / 2];
              else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() {
    case "$1$2" in *n/a*) echo n/a; return ;; esac
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'
}

# met VALUE TARGET: "yes" or "no" for a target like ">= 1.3" or "<= 768", n/a without a value.
met() {
    case "$1" in n/a) echo n/a; return ;; esac
    awk -v v="$1" -v op="${2%% *}" -v t="${2#* }" 'BEGIN {
        ok = (op == ">=") ? (v >= t) : (v <= t); print ok ? "yes" : "NO" }'
}

line() {
    printf '|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" \
        "$(printf -- '-%.0s' {1..11})" "$(printf -- '-%.0s' {1..11})" \
        "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..8})" \
        "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..5})"
}

# row LABEL SC_A SRV_A SC_B SRV_B METRIC TARGET: the medians of A and B and their ratio A/B.
row() {
    local label=$1 a b r
    a=$(median "$2" "$3" "$6")
    b=$(median "$4" "$5" "$6")
    r=$(ratio "$a" "$b")
    printf '| %-40s | %9s | %9s | %-8s | %6s | %-7s | %-3s |\n' "$label" "$a" "$b" "$5" "$r" \
        "$7" "$(met "$r" "$7")"
}

# row_abs LABEL SC SRV METRIC PEER_SC PEER_SRV TARGET: an absolute target on A, B shown beside.
row_abs() {
    local label=$1 a b
    a=$(median "$2" "$3" "$4")
    b=$(median "$5" "$6" "$4")
    printf '| %-40s | %9s | %9s | %-8s | %6s | %-7s | %-3s |\n' "$label" "$a" "$b" "$6" \
        "$(ratio "$a" "$b")" "$7" "$(met "$a" "$7")"
}

header() {
    printf '| %-40s | %9s | %9s | %-8s | %6s | %-7s | %-3s |\n' scenario netd peer "peer" \
        ratio target met
    line
}

echo
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
haproxy_version=n/a
[ "$HAVE_HAPROXY" = 1 ] && haproxy_version=$("$HAPROXY" -v 2>/dev/null | awk 'NR == 1 { print $3 }')
echo "medians of $ROUNDS rounds, $DURATION s each; netd -t $NETD_THREADS, node $("$NODE" --version)," \
    "haproxy $haproxy_version (nbthread $HAPROXY_THREADS), netload -t $NETLOAD_THREADS"
echo "machine: $(nproc) x ${cpu_model:-unknown CPU}, Linux $(uname -r)"
echo
echo "netd against Node (first round; ratio = netd / node):"
header
row "echo 100x64B req/s" echo_small netd echo_small node rps ">= 1.3"
row "echo 100x64B CPU us per request" echo_small netd echo_small node cpu "<= 0.75"
row "echo 10x64KiB MB/s" echo_large netd echo_large node mbs ">= 1.2"
row "connect rate conn/s" connect netd connect node cps ">= 1.4"
row "idle $IDLE_CONNS conns KiB per conn" idle netd idle node kib "<= 0.25"
row "proxy 100x64B req/s" proxy_small netd proxy_small node rps ">= 2.0"
row "proxy 10x64KiB MB/s" proxy_large netd proxy_large node mbs ">= 1.5"
echo
echo "netd against the limits (second round; ratio = netd / peer; echod = raw epoll, 1 thread):"
header
row "echo 100x64B p99 us vs raw epoll" echo_small netd echo_small echod p99 "<= 1.3"
row "echo 100x64B CPU us/req vs raw epoll" echo_small netd echo_small echod cpu "<= 1.05"
row "echo 100x64B p99 us vs raw epoll x$NETD_THREADS" echo_small netd echo_small echodN p99 "<= 1.3"
row "echo 100x64B CPU us/req vs raw epoll x$NETD_THREADS" echo_small netd echo_small echodN cpu "<= 1.05"
row_abs "idle $IDLE_CONNS conns bytes per conn" idle netd bytes idle evecho "<= 768"
row "leastconn conn/s vs reuseport" handoff leastconn handoff reuseport cps ">= 0.95"
row "leastconn CPU us/conn vs reuseport" handoff leastconn handoff reuseport cpu "<= 1.2"
row "proxy 10x64KiB MB/s vs haproxy" proxy_large netd proxy_large haproxy mbs ">= 1.5"
echo "  (raw epoll xN: bench/echod with as many threads as netd has workers; evecho: libevent"
echo "   bufferevents; the idle target is on netd's bytes, the peer is shown for scale)"

echo
echo "details (medians): rate, latency p50 / p99 / max in us, server CPU us per request or"
echo "connection, errors per run"
printf '  %-12s %-9s %10s %9s %9s %9s %9s %8s %6s\n' scenario server rate MB/s p50 p99 max cpu errors
for sc in echo_small echo_large connect handoff proxy_small proxy_large; do
    for srv in netd leastconn reuseport echod echodN node haproxy; do
        [ -s "$WORK/r.$sc.$srv.p50" ] || continue
        rate=$(median "$sc" "$srv" rps)
        [ "$rate" = n/a ] && rate=$(median "$sc" "$srv" cps)
        printf '  %-12s %-9s %10s %9s %9s %9s %9s %8s %6s\n' "$sc" "$srv" "$rate" \
            "$(median "$sc" "$srv" mbs)" "$(median "$sc" "$srv" p50)" "$(median "$sc" "$srv" p99)" \
            "$(median "$sc" "$srv" max)" "$(median "$sc" "$srv" cpu)" "$(median "$sc" "$srv" err)"
    done
done
for srv in netd echod evecho node; do
    [ -s "$WORK/r.idle.$srv.err" ] && printf '  %-12s %-9s %s bytes per connection, errors %s\n' \
        idle "$srv" "$(median idle "$srv" bytes)" "$(median idle "$srv" err)"
done
echo "  proxies' upstream: $UPSTREAM echo"

# The spread of the ratio from round to round shows how far to trust the median.
round_ratios() {
    local a=$WORK/r.$1.$2.$4 b=$WORK/r.$1.$3.$4
    if [ ! -s "$a" ] || [ ! -s "$b" ]; then echo n/a; return; fi
    paste -d ' ' "$a" "$b" | awk '{ if ($1 == "n/a" || $2 == "n/a" || $2 == 0) printf "n/a ";
                                    else printf "%.2f ", $1 / $2 } END { print "" }'
}
echo
echo "ratio in each round:"
while read -r label sc a b metric; do
    # shellcheck disable=SC2086 # arguments on purpose
    printf '  %-34s %s\n' "$label" "$(round_ratios "$sc" "$a" "$b" "$metric")"
done <<EOF
echo_small.rps(netd/node) echo_small netd node rps
echo_small.cpu(netd/node) echo_small netd node cpu
echo_large.mbs(netd/node) echo_large netd node mbs
connect.cps(netd/node) connect netd node cps
idle.kib(netd/node) idle netd node kib
proxy_small.rps(netd/node) proxy_small netd node rps
proxy_small.cpu(netd/node) proxy_small netd node cpu
proxy_large.mbs(netd/node) proxy_large netd node mbs
proxy_large.cpu(netd/node) proxy_large netd node cpu
echo_small.p99(netd/echod) echo_small netd echod p99
echo_small.cpu(netd/echod) echo_small netd echod cpu
echo_small.p99(netd/echodN) echo_small netd echodN p99
echo_small.cpu(netd/echodN) echo_small netd echodN cpu
handoff.cps(leastconn/reuseport) handoff leastconn reuseport cps
handoff.cpu(leastconn/reuseport) handoff leastconn reuseport cpu
proxy_large.mbs(netd/haproxy) proxy_large netd haproxy mbs
proxy_large.cpu(netd/haproxy) proxy_large netd haproxy cpu
EOF
exit 0
