#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# netd as an operator installs and runs it (issue 13): the generated unit (paths,
# `systemd-analyze verify`, its security exposure), netd.socket against the sample config,
# the install hooks (the sample never overwrites a config), `netd -f` with no arguments as
# root and as another user, `--check` without -c, the journald log format, the
# completions. Parts that need a tool or root say SKIP and why.
set -u

top_builddir=${top_builddir:-.}
top_srcdir=${top_srcdir:-..}
bindir=${bindir:-/usr/local/bin}
sysconfdir=${sysconfdir:-/usr/local/etc}
NETD=$(readlink -f "$top_builddir/src/daemon/netd")
NETCTL=$(readlink -f "$top_builddir/src/ctl/netctl")
UNIT=$top_builddir/conf/netd.service
[[ -x $NETD && -x $NETCTL ]] || { echo "missing $NETD or $NETCTL"; exit 99; }

dir=$(mktemp -d /tmp/netd-service-test.XXXXXX)
chmod 755 "$dir"
passed=0
failed=0
skipped=0
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$dir"
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIP: $*"; }
check() { # check DESCRIPTION EXPECTED ACTUAL
    if [[ "$2" == "$3" ]]; then ok; else fail "$1: expected [$2], got [$3]"; fi
}
contains() { # contains DESCRIPTION NEEDLE TEXT
    if [[ "$3" == *"$2"* ]]; then ok; else fail "$1: [$2] not in: $3"; fi
}
# Waits (up to 5 s) until COMMAND succeeds: no fixed sleeps.
wait_for() {
    local i
    for ((i = 0; i < 250; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.02
    done
    return 1
}
can_unshare() { ((EUID == 0)) && unshare -m true 2>/dev/null; }

# ---------------------------------------------------------------- the unit (13.12)
[[ -f $UNIT ]] || make -s -C "$top_builddir" conf/netd.service >/dev/null
exec_start=$(sed -n 's/^ExecStart=//p' "$UNIT")
check "ExecStart uses the configured bindir and sysconfdir" \
    "$bindir/netd -c $sysconfdir/netd/netd.json" "$exec_start"
check "ExecStartPre checks the config" "$bindir/netd --check -c $sysconfdir/netd/netd.json" \
    "$(sed -n 's/^ExecStartPre=//p' "$UNIT")"
contains "ExecReload goes through netctl reload" "$bindir/netctl" "$(sed -n 's/^ExecReload=//p' "$UNIT")"
contains "ExecReload goes through netctl reload" " reload" "$(sed -n 's/^ExecReload=//p' "$UNIT")"
for want in DynamicUser=yes AmbientCapabilities=CAP_NET_BIND_SERVICE \
    SystemCallFilter=@system-service ProtectClock=yes ProtectKernelLogs=yes \
    RestrictSUIDSGID=yes UMask=0077 RuntimeDirectory=netd; do
    grep -qx "$want" "$UNIT" && ok || fail "the unit lacks $want"
done
grep -q '@' <(grep -v '^#' "$UNIT" | grep -v 'SystemCallFilter') && fail "unsubstituted @...@ in $UNIT" || ok

if command -v systemd-analyze >/dev/null; then
    # Verified as installed: the same unit with the binaries where this build has them.
    mkdir -p "$dir/units"
    sed -e "s|$bindir/netd|$NETD|g" -e "s|$bindir/netctl|$NETCTL|g" "$UNIT" >"$dir/units/netd.service"
    cp "$top_srcdir/conf/netd.socket" "$dir/units/netd.socket"
    out=$(cd "$dir/units" && systemd-analyze verify --man=no netd.service netd.socket 2>&1)
    check "systemd-analyze verify is clean" "" "$out"
    exposure=$(cd "$dir/units" && systemd-analyze security --offline=yes netd.service 2>/dev/null |
        sed -nE 's/.*Overall exposure level for netd.service: ([0-9.]+).*/\1/p')
    echo "systemd-analyze security: exposure $exposure (4.2 before issue 13)"
    if [[ -n $exposure ]] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then ok; else
        fail "exposure $exposure, want <= 2.0"
    fi
else
    skip "systemd-analyze is not installed (apt-get install systemd): unit not verified"
fi

# ---------------------------------------------------------------- netd.socket and the sample (13.3, 13.13)
sample=$top_srcdir/conf/netd.sample.json
socket_addr=$(sed -n 's/^ListenStream=//p' "$top_srcdir/conf/netd.socket")
socket_name=$(sed -n 's/^FileDescriptorName=//p' "$top_srcdir/conf/netd.socket")
sample_addr=$(python3 -c '
import json, sys
for s in json.load(open(sys.argv[1]))["servers"]:
    if s["name"] == sys.argv[2]:
        print("%s:%d" % (s["host"], s["port"]))' "$sample" "$socket_name")
check "netd.socket listens where the sample's $socket_name server does" "$sample_addr" "$socket_addr"
out=$("$NETD" --check -c "$sample" 2>&1)
check "the sample config is valid" 0 $?
grep -q '"/run/netd/' "$sample" && ok || fail "the sample's runtime paths are not under /run/netd"
grep -q '"\.\./\|"run/' "$sample" && fail "the sample has a relative runtime path" || ok
out=$("$NETD" --check -v -c "$sample" 2>&1)
contains "--check -v prints the effective config" '"backlog": 511' "$out"
contains "--check -v spells out socketDirs" '"socketDirs"' "$out"

# ---------------------------------------------------------------- install hooks (13.13)
dest=$dir/dest
make -s -C "$top_builddir" install-data-local DESTDIR="$dest" >/dev/null 2>&1
installed=$dest$sysconfdir/netd/netd.json
cmp -s "$sample" "$installed" && ok || fail "install did not put the sample at $installed"
echo '{"servers": []}' >"$installed"
out=$(make -s -C "$top_builddir" install-data-local DESTDIR="$dest" 2>&1)
check "a second install keeps the operator's config" '{"servers": []}' "$(cat "$installed")"
contains "install says it kept it" "keeping the existing" "$out"
make -s -C "$top_builddir" uninstall-local DESTDIR="$dest" >/dev/null 2>&1
check "uninstall keeps a changed config" '{"servers": []}' "$(cat "$installed" 2>/dev/null)"
cp "$sample" "$installed"
make -s -C "$top_builddir" uninstall-local DESTDIR="$dest" >/dev/null 2>&1
[[ ! -e $installed ]] && ok || fail "uninstall left the unchanged sample"

# ---------------------------------------------------------------- netd -f alone (13.1)
if can_unshare; then
    # Root: /run/netd is created 0755 and the control socket answers there.
    out=$(unshare -m bash -c '
        mount -t tmpfs tmpfs /run || exit 90
        "$1" -f -t 1 2>"$3/root.log" & pid=$!
        for ((i = 0; i < 250; i++)); do "$2" --timeout 1s ping >/dev/null 2>&1 && break; sleep 0.02; done
        stat -c "%a %U" /run/netd
        "$2" ping >/dev/null && echo answered
        "$2" shutdown >/dev/null; wait $pid; echo "exit $?"' _ "$NETD" "$NETCTL" "$dir" 2>&1)
    check "netd -f as root: /run/netd 0755, answered, exit 0" $'755 root\nanswered\nexit 0' "$out"
    contains "netd -f says which control path" "control socket /run/netd/netd.sock (from the default for root)" \
        "$(cat "$dir/root.log")"
    # Another user, no XDG_RUNTIME_DIR: /tmp/netd-UID, created 0700.
    uid=$(id -u nobody)
    # A fresh /tmp; a build that lives under /tmp (make distcheck) is carried over into it.
    build=$(readlink -f "$top_builddir")
    out=$(unshare -m bash -c '
        mount -t tmpfs tmpfs /run && mkdir /run/build && mount --bind "$3" /run/build || exit 90
        mount -t tmpfs tmpfs /tmp || exit 90
        mkdir -p "$3" && mount --bind /run/build "$3" || exit 90
        runuser -u nobody -- env -u XDG_RUNTIME_DIR -u RUNTIME_DIRECTORY "$1" -f -t 1 2>/dev/null & pid=$!
        for ((i = 0; i < 250; i++)); do runuser -u nobody -- env -u XDG_RUNTIME_DIR "$2" --timeout 1s ping >/dev/null 2>&1 && break; sleep 0.02; done
        stat -c "%a %U" /tmp/netd-'"$uid"'
        runuser -u nobody -- env -u XDG_RUNTIME_DIR "$2" shutdown >/dev/null; wait $pid; echo "exit $?"
        # A directory of another user is refused, and so is one others may write.
        mkdir -m 0755 /tmp/netd-'"$uid"'-x 2>/dev/null
        rm -rf /tmp/netd-'"$uid"'; mkdir -m 0700 /tmp/netd-'"$uid"'
        runuser -u nobody -- env -u XDG_RUNTIME_DIR "$1" -f -t 1 2>&1 | grep -o "belongs to uid 0[^:]*"
        chown nobody /tmp/netd-'"$uid"'; chmod 0777 /tmp/netd-'"$uid"'
        runuser -u nobody -- env -u XDG_RUNTIME_DIR "$1" -f -t 1 2>&1 | grep -o "writable by others"
        ' _ "$NETD" "$NETCTL" "$build" 2>&1)
    check "netd -f as nobody" "700 nobody
exit 0
belongs to uid 0, not to netd's uid $uid
writable by others" "$out"
else
    skip "unshare -m as root is not available: netd -f with no arguments not run"
fi

# ---------------------------------------------------------------- --check without -c (13.6)
out=$("$NETD" --check 2>&1)
if [[ -e $sysconfdir/netd/netd.json ]]; then
    contains "--check without -c checks the installed config" "$sysconfdir/netd/netd.json" "$out"
else
    check "--check without -c names the installed config path" \
        "netd: no config file at $sysconfdir/netd/netd.json: netd would run the built-in config (no servers): valid" "$out"
fi
if can_unshare && [[ -d $sysconfdir ]]; then
    out=$(unshare -m bash -c '
        mount -t tmpfs tmpfs "$2" || exit 90
        mkdir "$2/netd"; cp "$3" "$2/netd/netd.json"
        "$1" --check; echo "exit $?"
        echo "{\"servers\":[{\"port\":8124,\"host\":\"999.1.1.1\"}]}" >"$2/netd/netd.json"
        "$1" --check 2>&1; echo "exit $?"' _ "$NETD" "$sysconfdir" "$sample" 2>&1)
    check "--check without -c validates $sysconfdir/netd/netd.json" \
        "netd: $sysconfdir/netd/netd.json: valid (2 servers)
exit 0
netd: $sysconfdir/netd/netd.json: servers[0].host: \"999.1.1.1\" is not an IP address or a host name
exit 2" "$out"
else
    skip "cannot mount over $sysconfdir: --check of a present default config not run"
fi

# ---------------------------------------------------------------- the log (13.11)
sock=$dir/netd.sock
: >"$dir/journal.log"
JOURNAL_STREAM=$(stat -c '%d:%i' "$dir/journal.log") "$NETD" -f -t 1 -s "$sock" 2>>"$dir/journal.log" &
pids+=($!)
wait_for "$NETCTL" -s "$sock" ping || fail "netd (journal) did not start"
"$NETCTL" -s "$sock" shutdown >/dev/null
wait "${pids[-1]}"
first=$(head -1 "$dir/journal.log")
[[ $first == "<6>info: "* ]] && ok || fail "under journald lines start with <6>: [$first]"
grep -q '^<[0-7]>' <(grep -v '^<[0-7]>' "$dir/journal.log") && fail "a journald line without <N>" || ok
JOURNAL_STREAM=1:2 "$NETD" -f -t 1 -s "$sock" 2>"$dir/plain.log" &
pids+=($!)
wait_for "$NETCTL" -s "$sock" ping || fail "netd (plain) did not start"
"$NETCTL" -s "$sock" shutdown >/dev/null
wait "${pids[-1]}"
first=$(head -1 "$dir/plain.log")
[[ $first =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+[-+][0-9]{4}\ netd:\ info:\  ]] && ok ||
    fail "not journald (JOURNAL_STREAM names another file): timestamped lines: [$first]"

# ---------------------------------------------------------------- another user (11.4 as nobody)
if ((EUID == 0)); then
    udir=$dir/nobody
    mkdir -m 0700 "$udir" && chown nobody "$udir"
    runuser -u nobody -- "$NETD" -f -t 1 -s "$udir/netd.sock" 2>"$dir/nobody.log" &
    pids+=($!)
    wait_for runuser -u nobody -- "$NETCTL" -s "$udir/netd.sock" ping || fail "netd as nobody did not start"
    check "control socket of nobody's netd" "600 nobody" "$(stat -c '%a %U' "$udir/netd.sock")"
    out=$(runuser -u nobody -- "$NETCTL" -s "$udir/netd.sock" --json listen "$udir/d.sock" --mode 0660 2>&1)
    contains "nobody's netd listens in its socket dir" '"ok":true' "$out"
    check "with the mode asked" "660 nobody" "$(stat -c '%a %U' "$udir/d.sock")"
    out=$(runuser -u nobody -- "$NETCTL" -s "$udir/netd.sock" listen /tmp/x-$$.sock 2>&1)
    contains "outside socketDirs" "EACCES" "$out"
    "$NETCTL" -s "$udir/netd.sock" shutdown >/dev/null
    wait "${pids[-1]}"
    check "nobody's netd removed its files" "" "$(ls "$udir")"
else
    skip "not root: the netd-as-another-user part needs runuser"
fi

# ---------------------------------------------------------------- completions (13.14)
bash_comp=$top_srcdir/completions/netctl
if [[ -f /usr/share/bash-completion/bash_completion ]]; then
    "$NETD" -f -t 1 -s "$sock" -c <(echo '{"servers":[{"name":"web","port":0,"host":"127.0.0.1"}]}') \
        2>/dev/null &
    pids+=($!)
    wait_for "$NETCTL" -s "$sock" ping || fail "netd (completion) did not start"
    complete_line() { # complete_line WORD... (the last is being completed)
        bash -c '
            source /usr/share/bash-completion/bash_completion
            source "$1"; shift
            export PATH="$(dirname "$1"):$PATH"; shift
            COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
            COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}
            _netctl netctl "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
            printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " "' _ "$bash_comp" "$NETCTL" "$@"
    }
    check "bash: subcommands" "server servers set " "$(complete_line netctl se)"
    check "bash: options of listen" "--backlog --balance " "$(complete_line netctl listen --ba)"
    check "bash: --balance values" "reuseport roundrobin " "$(complete_line netctl listen --balance r)"
    check "bash: server names from the daemon" "web " "$(complete_line netctl -s "$sock" close w)"
    check "bash: watch events" "close connection " "$(complete_line netctl watch c)"
    "$NETCTL" -s "$sock" shutdown >/dev/null
    wait "${pids[-1]}"
else
    skip "bash-completion is not installed: bash completion not exercised"
fi
if command -v zsh >/dev/null; then
    zsh -n "$top_srcdir/completions/_netctl" && ok || fail "_netctl is not valid zsh"
else
    skip "zsh is not installed: _netctl not checked"
fi

echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0))
