#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# netctl against a real netd, the way an operator scripts it: every subcommand's table and
# --json output, exit codes 0/1/2/3, and the issue's script (listen, count, close, count).
set -u

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
command -v python3 >/dev/null || { echo "SKIP: python3 is needed for the test clients"; exit 77; }

dir=$(mktemp -d /tmp/netctl-test.XXXXXX)
sock=$dir/netd.sock
pid=

cleanup() {
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
    [[ -n ${clients_pid:-} ]] && kill "$clients_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

ctl() { "$NETCTL" -s "$sock" --timeout 5000 "$@"; }


"$NETD" -f -t 2 -s "$sock" 2>"$dir/netd.log" &
pid=$!
wait_for ctl ping || { cat "$dir/netd.log"; echo "netd did not start"; exit 1; }

# ---- ping, help
out=$(ctl --json ping)
check "ping --json is one line with ok:true" true "$(python3 -c 'import json,sys; print(str(json.loads(sys.argv[1])["ok"]).lower())' "$out")"
check "ping pid" "$pid" "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["pid"])' "$out")"
ctl help | grep -q '^ *listen' && ok || fail "help lists listen"
# Every option a subcommand takes (what the completion offers) is in its --help.
for sub in listen close sockets set shutdown upgrade top; do
    usage=$("$NETCTL" "$sub" --help)
    for opt in $("$NETCTL" __complete 2 "$sub" --); do
        case $opt in --json | --quiet | --help) continue ;; esac
        grep -q -- "$opt" <<<"$usage" && ok || fail "netctl $sub --help does not show $opt"
    done
done

# ---- the issue's script: listen, read the port, 20 clients, count, close, count
ctl listen 0 --host 127.0.0.1 --name web --handler echo >/dev/null
check "listen exit" 0 $?
port=$(ctl --json server web | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["address"]["port"])')
[[ $port =~ ^[0-9]+$ && $port -gt 0 ]] && ok || fail "port from server --json: [$port]"

# 20 clients held open by a helper process until its stdin closes.
fifo=$dir/hold
mkfifo "$fifo"
python3 - "$port" "$fifo" <<'EOF' &
import socket, sys
port, fifo = int(sys.argv[1]), sys.argv[2]
cs = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
for c in cs:                      # each echoes: the connection is really served
    c.sendall(b"x"); assert c.recv(1) == b"x"
print("ready", flush=True)
open(fifo).read()                 # hold until the test closes the fifo
for c in cs: c.close()
EOF
clients_pid=$!
exec 3>"$fifo"
wait_for bash -c "[[ \$('$NETCTL' -s '$sock' connections web) == 20 ]]"
check "connections web with 20 clients" 20 "$(ctl connections web)"
table=$(ctl servers)
head -1 <<<"$table" | grep -q 'NAME.*STATE.*ADDRESS.*CONNS' && ok || fail "servers table header: $(head -1 <<<"$table")"
grep -qE '^ *[0-9]+ +web +listening +127\.0\.0\.1:'"$port"' .* 20 ' <<<"$table" && ok || fail "servers row: $table"
check "sockets lists 20 rows" 20 "$(ctl sockets web 2>/dev/null | tail -n +2 | wc -l)"
check "sockets --json total" 20 "$(ctl --json sockets web | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')"

# ---- per-socket commands while the 20 clients are held: move, rebalance, destroy, watch
sid=$(ctl --json sockets web --limit 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["sockets"][0]["id"])')
thread=$(ctl --json sockets web --limit 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["sockets"][0]["thread"])')
other=$((1 - thread))
check "move replies with the socket on its new thread" "$other" \
    "$(ctl --json move "$sid" "$other" | python3 -c 'import json,sys; print(json.load(sys.stdin)["socket"]["thread"])')"
ctl move "$sid" 7 2>/dev/null
check "move to a thread that does not exist" 1 $?
moved=$(ctl --json rebalance web | python3 -c 'import json,sys; print(json.load(sys.stdin)["moved"])')
[[ $moved =~ ^[0-9]+$ ]] && ok || fail "rebalance moved: [$moved]"
per_thread=$(ctl --json sockets web | python3 -c '
import json,sys,collections
c=collections.Counter(s["thread"] for s in json.load(sys.stdin)["sockets"]); print(abs(c[0]-c[1]))')
((per_thread <= 1)) && ok || fail "after rebalance the threads differ by $per_thread"
ctl ls | grep -q ' web ' && ok || fail "ls is an alias of servers"
ctl stats | grep -qE '^THREAD +CONNS' && ok || fail "stats prints a per-thread table"
"$NETCTL" -s "$sock" --json watch connection close >"$dir/watch.out" 2>&1 &
watch_pid=$!
# The watch is live once it reports a connection: make them until one shows.
wait_for bash -c "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", $port)).close()'; grep -q '\"connection\"' '$dir/watch.out'"
check "destroy exit" 0 "$(ctl destroy "$sid" >/dev/null; echo $?)"
ctl destroy "$sid" 2>/dev/null
check "destroying it again" 1 $?
wait_for grep -q '"close"' "$dir/watch.out"
grep -q "\"socket\":$sid" "$dir/watch.out" && ok || fail "watch saw the destroyed socket's close: $(cat "$dir/watch.out")"
kill "$watch_pid" 2>/dev/null
wait "$watch_pid" 2>/dev/null
wait_for bash -c "[[ \$('$NETCTL' -s '$sock' connections web) == 19 ]]"
check "connections web after one destroy" 19 "$(ctl connections web)"
exec 3>&-
wait "$clients_pid"
clients_pid=
wait_for bash -c "[[ \$('$NETCTL' -s '$sock' connections web) == 0 ]]"
check "connections web after the clients closed" 0 "$(ctl connections web)"

# ---- set, stats, metrics
ctl set web --max-connections 5 --timeout 60000 >/dev/null
check "set exit" 0 $?
check "maxConnections after set" 5 "$(ctl --json server web | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["maxConnections"])')"
# The 20 clients, one destroy and the watch probes were all accepted; stats and metrics
# must tell the same figure.
accepted=$(ctl stats | sed -nE 's/^acceptedTotal: +([0-9]+)$/\1/p')
[[ -n $accepted ]] && ((accepted >= 20)) && ok || fail "stats acceptedTotal >= 20: [$accepted]"
ctl metrics | grep -q "^netd_accepted_total $accepted\$" && ok || fail "metrics netd_accepted_total $accepted"

# ---- exit codes
ctl close nosuch 2>"$dir/err"
check "daemon error exit code" 1 $?
grep -q '^netctl: ENOSERVER: ' "$dir/err" && ok || fail "error line: $(cat "$dir/err")"
ctl listen 70000 2>/dev/null
check "port 70000 is a usage error" 2 $?
ctl destroy abc 2>/dev/null
check "non-numeric socket id is a usage error" 2 $?
ctl listen 0 --handler nosuch 2>"$dir/err"
check "unknown handler: netd's error" 1 $?
grep -q '^netctl: EARG: .*unknown handler "nosuch" (echo, discard, banner, proxy)' "$dir/err" && ok ||
    fail "unknown handler names the ones netd has: $(cat "$dir/err")"
ctl listen 0 --handler 'no such' 2>/dev/null
check "a handler name with a space is a usage error" 2 $?
"$NETCTL" -s "$dir/none.sock" ping 2>"$dir/err"
check "unreachable daemon" 3 $?
grep -q "$dir/none.sock" "$dir/err" && ok || fail "unreachable names the path: $(cat "$dir/err")"
ctl -q ping
check "-q ping exit" 0 $?
check "-q prints nothing" "" "$(ctl -q ping)"
out=$(ctl call '{"cmd":"nosuch"}')
check "call with an unknown command" 1 $?
grep -q '"ECOMMAND"' <<<"$out" && ok || fail "call prints the raw reply: $out"

# ---- issue 13: durations, did-you-mean, this user's path, exit 4, reload
ctl listen 0 --host 127.0.0.1 --name dur --timeout 5m --keep-alive 30s >/dev/null
check "listen --timeout 5m" 300000 "$(ctl --json server dur | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["timeout"])')"
ctl set dur --timeout 1500ms >/dev/null
check "set --timeout 1500ms" 1500 "$(ctl --json server dur | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["timeout"])')"
"$NETCTL" -s "$sock" --timeout 2s ping >/dev/null
check "--timeout 2s" 0 $?
ctl set dur --timeout 5x 2>"$dir/err"
check "a bad duration is a usage error" 2 $?
grep -q "'5x' is not a duration" "$dir/err" && ok || fail "bad duration message: $(cat "$dir/err")"
ctl srvers 2>"$dir/err"
check "unknown command exit" 2 $?
grep -q "unknown command 'srvers' (did you mean servers?)" "$dir/err" && ok || fail "no suggestion: $(cat "$dir/err")"
ctl xyzzy 2>"$dir/err"
grep -q "did you mean" "$dir/err" && fail "a suggestion for nonsense: $(cat "$dir/err")" || ok
NETD_SOCKET=/some/where.sock "$NETCTL" --help | grep -q '/some/where.sock (\$NETD_SOCKET)' && ok ||
    fail "--help does not show the path this user would use"
if ((EUID == 0)) && id nobody >/dev/null 2>&1; then
    out=$(runuser -u nobody -- env -u XDG_RUNTIME_DIR -u NETD_SOCKET -u RUNTIME_DIRECTORY "$NETCTL" --help)
    grep -q "/tmp/netd-$(id -u nobody)/netd.sock (the default for your uid)" <<<"$out" && ok ||
        fail "--help as nobody: $(grep -A1 socket <<<"$out")"
fi
# close waits for its connections; --timeout ends the wait with exit 4, the close goes on.
lport=$(ctl --json server dur | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["address"]["port"])')
coproc HOLD { python3 -c '
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
c.sendall(b"x"); assert c.recv(1) == b"x"
print("held", flush=True)
sys.stdin.read()' "$lport"; }
hold_pid=$HOLD_PID
read -r -t 5 held <&"${HOLD[0]}"
check "a client held on dur" held "$held"
ctl --timeout 600ms close dur 2>"$dir/err"
check "close timed out: its own exit status" 4 $?
grep -q 'close dur: still closing after 600 ms, 1 connection left' "$dir/err" && ok || fail "close timeout message: $(cat "$dir/err")"
check "dur is closing, not gone" closing "$(ctl --json server dur | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["state"])')"
eval "exec ${HOLD[1]}>&-"
wait "$hold_pid"
wait_for bash -c "! '$NETCTL' -s '$sock' server dur"
# reload: this netd runs without a config file: nothing to reload, and it says so.
out=$(ctl reload)
check "reload exit without a config file" 0 $?
grep -qE '^kept +-$' <<<"$out" && ok || fail "reload output: $out"

# ---- close, then the server is gone
ctl close web >/dev/null
check "close exit" 0 $?
ctl close web 2>/dev/null
check "closing a closed server" 1 $?

# ---- shutdown: netd drains and exits 0
ctl shutdown >/dev/null
check "shutdown exit" 0 $?
wait "$pid"
check "netd exit status after shutdown" 0 $?
pid=

echo "$passed passed, $failed failed"
((failed == 0))
