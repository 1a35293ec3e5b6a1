#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# netd against Node's net module, under the same load, one after the other.
#
#   bench/compare.sh BUILDDIR        (or `make bench` from the build directory)
#
# Starts netd (an echo server, and a proxy in front of a plain upstream echo) and the same
# servers written with Node (bench/node-echo.js, bench/node-proxy.js), runs bench/netload
# against each for every scenario, several rounds, and prints the medians as one table:
# scenario | netd | node | ratio (netd/node) | target.
#
# Environment: DURATION (s per run, 5), ROUNDS (3), WARMUP (s, 1), NETD_THREADS (2),
# NETLOAD_THREADS (1), CONNECT_CONNS (32), IDLE_CONNS (9000), IDLE_HOLD (s, 2),
# UPSTREAM (plain | node | netd: who serves the proxies' upstream echo, plain = bench/echod), KEEP (1: keep the
# work directory with every raw result and log), NODE (node binary).
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
NODE=${NODE:-node}
KEEP=${KEEP:-0}

die() { echo "compare.sh: $*" >&2; exit 2; }
note() { echo "compare.sh: $*" >&2; }

[ $# -ge 1 ] || die "usage: compare.sh BUILDDIR"
BUILDDIR=$(cd "$1" && pwd) || die "no build directory $1"
BENCHDIR=$(cd "$(dirname "$0")" && pwd)
NETLOAD=$BUILDDIR/bench/netload
NETD=$BUILDDIR/src/daemon/netd
CLK_TCK=$(getconf CLK_TCK)

if [ ! -x "$NETLOAD" ]; then
    make -C "$BUILDDIR" bench/netload >&2 || die "cannot build $NETLOAD"
fi
command -v "$NODE" >/dev/null || die "node not found (set NODE=)"
HAVE_NETD=1
[ -x "$NETD" ] || { note "$NETD not built: netd columns will read n/a"; HAVE_NETD=0; }

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

free_port P_UP
free_port P_NODE_ECHO
free_port P_NODE_PROXY
free_port P_NETD_ECHO
free_port P_NETD_PROXY

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

echo_entry() {
    echo "{\"name\":\"echo\",\"port\":$1,\"host\":\"127.0.0.1\",\"handler\":{\"type\":\"echo\"}}"
}

proxy_entry() {
    echo "{\"name\":\"proxy\",\"port\":$1,\"host\":\"127.0.0.1\",\"handler\":{\"type\":\"proxy\",\"port\":$2,\"host\":\"127.0.0.1\"}}"
}

if [ "$UPSTREAM" = plain ] && [ -x "$BUILDDIR/bench/echod" ]; then
    # The issue's "plain upstream echo": a bare epoll echo, the same for both proxies.
    start_or_die echod-upstream "$P_UP" "$BUILDDIR/bench/echod" "$P_UP"
elif [ "$UPSTREAM" = netd ] && [ "$HAVE_NETD" = 1 ]; then
    netd_config "$WORK/up" "$(echo_entry "$P_UP")"
    start_netd netd-upstream "$WORK/up/netd.json" "$P_UP" || die "upstream netd did not start"
else
    [ "$UPSTREAM" = node ] || note "UPSTREAM=$UPSTREAM is not available: using node"
    UPSTREAM=node
    start_or_die node-upstream "$P_UP" "$NODE" "$BENCHDIR/node-echo.js" "$P_UP"
fi
UP_PID=$STARTED_PID

start_or_die node-echo "$P_NODE_ECHO" "$NODE" "$BENCHDIR/node-echo.js" "$P_NODE_ECHO"
NODE_ECHO_PID=$STARTED_PID
start_or_die node-proxy "$P_NODE_PROXY" "$NODE" "$BENCHDIR/node-proxy.js" "$P_NODE_PROXY" "$P_UP"
NODE_PROXY_PID=$STARTED_PID

NETD_PID=
if [ "$HAVE_NETD" = 1 ]; then
    netd_config "$WORK/netd" "$(echo_entry "$P_NETD_ECHO")" \
        "$(proxy_entry "$P_NETD_PROXY" "$P_UP")"
    if start_netd netd "$WORK/netd/netd.json" "$P_NETD_ECHO" &&
        wait_port "$P_NETD_PROXY" "$STARTED_PID"; then
        NETD_PID=$STARTED_PID
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

# run_pingpong SCENARIO SERVER PID PORT CONNS SIZE: one closed-loop run, with the server's
# CPU time over the whole run (warm-up included, and so are its requests in total_reqs).
run_pingpong() {
    local sc=$1 srv=$2 pid=$3 port=$4 conns=$5 size=$6 c0 c1 line
    c0=$(cpu_us "$pid")
    line=$("$NETLOAD" pingpong "127.0.0.1:$port" -c "$conns" -s "$size" -t "$NETLOAD_THREADS" \
        -d "$DURATION" -w "$WARMUP" | tail -n 1)
    c1=$(cpu_us "$pid")
    echo "$sc $srv $line" >>"$WORK/raw.txt"
    record "$sc" "$srv" rps "$(field reqs_per_s "$line")"
    record "$sc" "$srv" mbs "$(field mb_per_s "$line")"
    record "$sc" "$srv" p50 "$(field p50_us "$line")"
    record "$sc" "$srv" p99 "$(field p99_us "$line")"
    record "$sc" "$srv" err "$(field errors "$line")"
    local total
    total=$(field total_reqs "$line")
    if [ "$total" != n/a ] && [ "$total" -gt 0 ]; then
        record "$sc" "$srv" cpu "$(awk -v c=$((c1 - c0)) -v n="$total" 'BEGIN { printf "%.2f", c / n }')"
    fi
    note "  $sc $srv: $(field reqs_per_s "$line") req/s $(field mb_per_s "$line") MB/s" \
        "p99 $(field p99_us "$line") us, errors $(field errors "$line")"
}

run_connect() {
    local srv=$1 pid=$2 port=$3 line
    line=$("$NETLOAD" connect "127.0.0.1:$port" -c "$CONNECT_CONNS" -t "$NETLOAD_THREADS" \
        -d "$DURATION" -w "$WARMUP" | tail -n 1)
    echo "connect $srv $line" >>"$WORK/raw.txt"
    record connect "$srv" cps "$(field conns_per_s "$line")"
    record connect "$srv" err "$(field errors "$line")"
    note "  connect $srv: $(field conns_per_s "$line") conn/s, errors $(field errors "$line")"
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
    fi
    record idle "$srv" err "$(field errors "$line")"
    note "  idle $srv: $ok/$IDLE_CONNS held, RSS $rss0 -> $peak KiB, errors $(field errors "$line")"
}

# Memory is measured on a fresh server each round: an allocator keeps what the previous
# round's connections freed, so a second run on the same process would grow by ~nothing.
idle_fresh() {
    local srv=$1 port pid
    free_port port
    if [ "$srv" = netd ]; then
        netd_config "$WORK/idle-$round" "$(echo_entry "$port")"
        start_netd "netd-idle-$round" "$WORK/idle-$round/netd.json" "$port" || return
    else
        start node-idle-$round "$NODE" "$BENCHDIR/node-echo.js" "$port"
        wait_port "$port" "$STARTED_PID" || { note "node echo (idle) did not start"; return; }
    fi
    pid=$STARTED_PID
    run_idle "$srv" "$pid" "$port"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

# echo_both / proxy_both FUNCTION ARGS...: the same run against netd (when there is one), then node.
echo_both() {
    [ "$HAVE_NETD" = 1 ] && "$@" netd "$NETD_PID" "$P_NETD_ECHO"
    "$@" node "$NODE_ECHO_PID" "$P_NODE_ECHO"
}

proxy_both() {
    [ "$HAVE_NETD" = 1 ] && "$@" netd "$NETD_PID" "$P_NETD_PROXY"
    "$@" node "$NODE_PROXY_PID" "$P_NODE_PROXY"
}

# Adapters so each scenario reads as "run it on both".
pp() {
    local sc=$1 conns=$2 size=$3 srv=$4 pid=$5 port=$6
    run_pingpong "$sc" "$srv" "$pid" "$port" "$conns" "$size"
}

note "netd ${NETD_PID:-n/a} (threads $NETD_THREADS), node echo $NODE_ECHO_PID," \
    "node proxy $NODE_PROXY_PID, upstream $UPSTREAM $UP_PID; ${ROUNDS} rounds of ${DURATION} s"
for ((round = 1; round <= ROUNDS; round++)); do
    note "round $round/$ROUNDS"
    if [ "$IDLE_CONNS" -gt 0 ]; then
        [ "$HAVE_NETD" = 1 ] && idle_fresh netd
        idle_fresh node
    fi
    echo_both pp echo_small 100 64
    echo_both pp echo_large 10 65536
    echo_both run_connect
    proxy_both pp proxy_small 100 64
    proxy_both pp proxy_large 10 65536
done

# ------------------------------------------------------------------------------ table

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

row() {
    local label=$1 sc=$2 metric=$3 target=$4 a b
    a=$(median "$sc" netd "$metric")
    b=$(median "$sc" node "$metric")
    printf '| %-32s | %10s | %10s | %6s | %-7s |\n' "$label" "$a" "$b" "$(ratio "$a" "$b")" "$target"
}

echo
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "netd vs node: medians of $ROUNDS rounds, $DURATION s each; netd -t $NETD_THREADS," \
    "node $("$NODE" --version), netload -t $NETLOAD_THREADS"
echo "machine: $(nproc) x ${cpu_model:-unknown CPU}, Linux $(uname -r)"
printf '| %-32s | %10s | %10s | %6s | %-7s |\n' scenario netd node ratio target
printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..34})" "$(printf -- '-%.0s' {1..12})" \
    "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..8})" "$(printf -- '-%.0s' {1..9})"
row "echo 100x64B req/s" echo_small rps ">= 1.3"
row "echo 100x64B CPU us per request" echo_small cpu "<= 0.75"
row "echo 10x64KiB MB/s" echo_large mbs ">= 1.2"
row "connect rate conn/s" connect cps ">= 1.4"
row "idle $IDLE_CONNS conns KiB per conn" idle kib "<= 0.25"
row "proxy 100x64B req/s" proxy_small rps ">= 2.0"
row "proxy 10x64KiB MB/s" proxy_large mbs ">= 1.5"

echo
echo "details (medians): latency p50 / p99 in us, server CPU us per request, errors per run"
for sc in echo_small echo_large proxy_small proxy_large; do
    for srv in netd node; do
        [ -s "$WORK/r.$sc.$srv.p50" ] || continue
        printf '  %-12s %-5s p50 %8s  p99 %8s  cpu/req %7s  errors %s\n' "$sc" "$srv" \
            "$(median $sc $srv p50)" "$(median $sc $srv p99)" "$(median $sc $srv cpu)" \
            "$(median $sc $srv err)"
    done
done
for srv in netd node; do
    [ -s "$WORK/r.connect.$srv.err" ] && printf '  %-12s %-5s errors %s\n' connect "$srv" \
        "$(median connect $srv err)"
    [ -s "$WORK/r.idle.$srv.err" ] && printf '  %-12s %-5s errors %s\n' idle "$srv" \
        "$(median idle $srv err)"
done
echo "  proxies' upstream: $UPSTREAM echo"

# The spread of the ratio from round to round shows how far to trust the median.
round_ratios() {
    local a=$WORK/r.$1.netd.$2 b=$WORK/r.$1.node.$2
    if [ ! -s "$a" ] || [ ! -s "$b" ]; then echo n/a; return; fi
    paste -d ' ' "$a" "$b" | awk '{ if ($1 == "n/a" || $2 == "n/a" || $2 == 0) printf "n/a ";
                                    else printf "%.2f ", $1 / $2 } END { print "" }'
}
echo
echo "ratio in each round (netd/node):"
for pair in "echo_small rps" "echo_small cpu" "echo_large mbs" "connect cps" "idle kib" \
    "proxy_small rps" "proxy_small cpu" "proxy_large mbs" "proxy_large cpu"; do
    # shellcheck disable=SC2086 # two arguments on purpose
    printf '  %-16s %s\n' "${pair/ /.}" "$(round_ratios $pair)"
done
exit 0
