#!/usr/bin/env bash
# netctl top in a real terminal (a tmux pane on a private tmux server): the screen shows
# the servers, a bar per thread and the busiest sockets; s cycles the sort, p pauses, q
# quits and gives the terminal back. Off a terminal, one line per interval. And the same
# clients through `netctl sockets --sort/--peer` (names in SERVER, SEND-Q).
set -u

top_builddir=${top_builddir:-.}
NETD=$top_builddir/src/daemon/netd
NETCTL=$(cd "$(dirname "$top_builddir/src/ctl/netctl")" && pwd)/netctl
[[ -x $NETD && -x $NETCTL ]] || { echo "missing $NETD or $NETCTL"; exit 99; }
command -v python3 >/dev/null || { echo "SKIP: python3 is needed for the test clients"; exit 77; }
command -v tmux >/dev/null || { echo "SKIP: tmux is not installed (scripts/dev.sh installs it)"; exit 77; }
scale=${CK_TIMEOUT_MULTIPLIER:-1}

dir=$(mktemp -d /tmp/netd-top.XXXXXX)
TMUX_SOCK=netd-top-$$
pid= clients=
passed=0
failed=0
cleanup() {
    tmux -L "$TMUX_SOCK" kill-server 2>/dev/null
    [[ -n $clients ]] && kill "$clients" 2>/dev/null
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
ctl() { "$NETCTL" -s "$dir/netd.sock" --timeout 5000 "$@"; }
pane() { tmux -L "$TMUX_SOCK" capture-pane -p -t top; }
keys() { tmux -L "$TMUX_SOCK" send-keys -t top "$@"; }
# Waits up to 5 s (scaled) until COMMAND succeeds.
wait_for() {
    local i
    for ((i = 0; i < 50 * scale; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        python3 -c 'import time; time.sleep(0.1)'
    done
    return 1
}
screen_has() { pane | grep -qE -- "$1"; }
expect_screen() { # expect_screen DESCRIPTION REGEX
    if wait_for screen_has "$2"; then ok; else
        fail "$1: no line matching /$2/ on the screen:"
        pane | sed 's/^/    | /'
    fi
}

cat >"$dir/netd.json" <<EOF
{"control": {"path": "netd.sock"}, "shutdownTimeoutMs": 1000,
 "servers": [{"name": "echo", "port": 0, "host": "127.0.0.1"}]}
EOF
"$NETD" -t 2 -c "$dir/netd.json" 2>"$dir/netd.log" &
pid=$!
wait_for ctl ping || { cat "$dir/netd.log"; echo "netd did not start"; exit 1; }
port=$(ctl --json server echo | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["address"]["port"])')

# Three clients with 100, 3000 and 20000 bytes echoed; a fourth comes when the fifo
# gets a line, and all leave when it closes.
mkfifo "$dir/ctl"
python3 - "$port" "$dir/ctl" "$dir/ports" <<'EOF' &
import socket, sys
port, fifo, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def client(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"x" * n)
    got = 0
    while got < n:
        got += len(c.recv(65536))
    return c
cs = [client(n) for n in (100, 3000, 20000)]
with open(out, "w") as f:
    f.write(" ".join(str(c.getsockname()[1]) for c in cs) + "\n")
with open(fifo) as f:
    for line in f:
        cs.append(client(10))
EOF
clients=$!
exec 3>"$dir/ctl"
wait_for test -s "$dir/ports" || fail "clients did not start"
read -r p100 p3000 p20000 <"$dir/ports"

# ---- netctl sockets: the busiest first, one peer, the name in SERVER, SEND-Q
table=$(ctl sockets --sort bytes)
head -1 <<<"$table" | grep -qE '^ *ID +SERVER +THREAD +REMOTE +LOCAL +STATE +ROLE +READ +WRITTEN +SEND-Q +AGE +IDLE$' && ok ||
    fail "sockets header: $(head -1 <<<"$table")"
order=$(tail -n +2 <<<"$table" | grep -oE "127\.0\.0\.1:[0-9]+ " | sed -n '1~2p' | sed 's/.*://' | tr -d ' ' | tr '\n' ' ')
[[ $order == "$p20000 $p3000 $p100 " ]] && ok || fail "sockets --sort bytes: [$order]"
tail -n +2 <<<"$table" | awk '$2 != "echo" { bad = 1 } END { exit bad }' && ok || fail "SERVER column: $table"
one=$(ctl sockets --peer "127.0.0.1:$p3000")
[[ $(tail -n +2 <<<"$one" | wc -l) == 1 ]] && grep -q "127.0.0.1:$p3000 " <<<"$one" && ok || fail "--peer: $one"
[[ $(ctl sockets --peer 127.0.0.1 | tail -n +2 | wc -l) == 3 ]] && ok || fail "--peer address alone"
ctl sockets --sort size >/dev/null 2>&1
[[ $? == 2 ]] && ok || fail "--sort size: usage error expected"
ctl sockets --peer nonsense >/dev/null 2>&1
[[ $? == 1 ]] && ok || fail "--peer nonsense: the daemon's EARG expected"
ctl listen 0 --host 127.0.0.1 --name logged --access-log >/dev/null
[[ $(ctl --json server logged | python3 -c 'import json,sys; print(json.load(sys.stdin)["server"]["accessLog"])') == True ]] && ok ||
    fail "listen --access-log"
ctl close logged >/dev/null

# ---- the screen
tmux -L "$TMUX_SOCK" new-session -d -s top -x 150 -y 40 \
    "$NETCTL -s $dir/netd.sock top --interval 300; echo \"top-exit=\$?\"; stty -a | tr ' ' '\n' | grep -x -- '-\\?icanon'; sleep 60"
expect_screen "header with the version and connection count" '^netd [0-9.]+ +pid [0-9]+ .* conns 3 '
expect_screen "sort and keys line" '^sort: bytes +q quit +s sort +p pause'
expect_screen "server row: echo with 3 connections" '^echo +3 '
expect_screen "thread bars" '^[01] +[0-9]+ #+'
expect_screen "busiest socket first" "^[0-9]+ +echo +[01] +127\\.0\\.0\\.1:$p20000 "
# The sockets table in order: 20000, 3000, 100 bytes.
order=$(pane | grep -oE "127\.0\.0\.1:[0-9]+" | sed 's/.*://' | tr '\n' ' ')
[[ $order == "$p20000 $p3000 $p100 " ]] && ok || fail "sockets by bytes: [$order], expected [$p20000 $p3000 $p100 ]"

keys s
expect_screen "s: sort by age" '^sort: age '
order=$(pane | grep -oE "127\.0\.0\.1:[0-9]+" | sed 's/.*://' | tr '\n' ' ')
[[ $order == "$p100 $p3000 $p20000 " ]] && ok || fail "sockets by age: [$order], expected oldest first"
keys s
expect_screen "s: sort by idle" '^sort: idle '
keys s
expect_screen "s: back to bytes" '^sort: bytes '

keys p
expect_screen "p: paused" '\[PAUSED\]'
echo more >&3 # a fourth client: a paused screen does not show it
wait_for bash -c "[[ \$('$NETCTL' -s '$dir/netd.sock' connections echo) == 4 ]]" || fail "no fourth client"
python3 -c 'import time; time.sleep(1.0)' # three refresh intervals
screen_has '^echo +3 ' && ok || fail "the paused screen changed: $(pane | grep '^echo')"
keys p
expect_screen "p again: live, 4 connections" '^echo +4 '
screen_has '\[PAUSED\]' && fail "still says PAUSED" || ok

keys q
expect_screen "q: top exits 0" '^top-exit=0$'
expect_screen "the terminal is given back in canonical mode" '^icanon$'
screen_has '^SERVER ' && fail "the top screen is still shown after q" || ok

# ---- not a terminal: one line per interval
out=$("$NETCTL" -s "$dir/netd.sock" top --interval 200 --count 3 | cat)
[[ $(wc -l <<<"$out") == 4 ]] && ok || fail "top | cat: expected a header and 3 lines: $out"
head -1 <<<"$out" | grep -qE '^time +conns +accepts/s +in_bytes/s +out_bytes/s$' && ok || fail "header: $(head -1 <<<"$out")"
[[ $(tail -n 3 <<<"$out" | awk '$2 == 4' | wc -l) == 3 ]] && ok || fail "lines with 4 connections: $out"
"$NETCTL" -s "$dir/nonexistent.sock" top --count 1 >/dev/null 2>&1
[[ $? == 3 ]] && ok || fail "top without a daemon: exit 3"

exec 3>&-
echo "top: $passed passed, $failed failed"
((failed == 0))
