#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The developer's entry point: `run` builds and starts the echo example, `test` checks the
# formatting and runs every suite in a plain, an ASan+UBSan and a TSan build, and the chaos
# runs under both sanitizers (what CI runs); `lint` runs the static checkers.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

# tmux and prometheus (promtool too) are for tests only: netctl top in a real terminal,
# and a real Prometheus scraping netd; clang-format for `make format-check`.
PACKAGES=(autoconf automake libtool pkg-config libevent-dev libjansson-dev check make gcc valgrind
    bash-completion zsh systemd util-linux python3 tmux prometheus clang-format)
JOBS=$(nproc 2>/dev/null || echo 2)

usage() {
    cat >&2 <<'EOF'
usage: scripts/dev.sh COMMAND
  run    build, then start netd with conf/netd.json (echo on 127.0.0.1:8124)
  test   check the formatting (make format-check), build and run every test suite: plain,
         ASan+UBSan and TSan, and the chaos runs
         (CHAOS_SECONDS, default 20; CHAOS_SEED to replay) under ASan+UBSan and TSan
  lint   run cppcheck and clang-tidy (make lint)
EOF
    exit 2
}

# Installs what is missing when we may (root on Debian); otherwise names it and stops,
# because a half-configured tree fails later with far less helpful messages.
ensure_packages() {
    command -v dpkg-query >/dev/null 2>&1 || return 0
    local missing=() p
    for p in "$@"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    if ((EUID != 0)); then
        echo "dev.sh: missing packages: ${missing[*]}" >&2
        echo "dev.sh: install them with: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "dev.sh: installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

bootstrap() {
    if [[ ! -e configure || ! -e Makefile.in || configure.ac -nt configure || Makefile.am -nt configure ]]; then
        autoreconf -fi
    fi
}

# configure DIR [OPTIONS...]: an out-of-tree build; later runs rely on the Makefile's
# own rules to re-run configure when configure.ac changes.
configure_in() {
    local dir=$1
    shift
    if [[ ! -e $dir/Makefile ]]; then
        mkdir -p "$dir"
        (cd "$dir" && ../configure "$@")
    fi
}

build() {
    ensure_packages "${PACKAGES[@]}"
    bootstrap
    configure_in build --enable-werror
    make -C build -j"$JOBS"
}

passed=0
failed=0
checks=0
check_failures=0

# check_in DIR [VAR=VALUE...]: `make check` there (which builds first) with the given
# environment, tallying automake's per-program PASS/FAIL lines and Check's per-suite
# "Checks: N, Failures: F, Errors: E" lines. Returns make's status.
check_in() {
    local dir=$1 out rc=0 p f c cf
    shift
    out=$dir/check.out
    env "$@" make -C "$dir" -j"$JOBS" check 2>&1 | tee "$out" || rc=$?

    p=$(grep -cE '^(PASS|XFAIL): ' "$out" || true)
    f=$(grep -cE '^(FAIL|XPASS|ERROR): ' "$out" || true)
    # A build that breaks before any test runs must not read as "0 failed".
    if ((rc != 0 && f == 0)); then
        f=1
        echo "dev.sh: make check failed in $dir before any test reported a failure" >&2
    fi
    passed=$((passed + p))
    failed=$((failed + f))

    # The serial harness prints test output to the console; the parallel one to logs.
    local sources=("$out") trs
    if [[ -f $dir/test-suite.log ]]; then
        sources=()
        while IFS= read -r trs; do
            sources+=("${trs%.trs}.log")
        done < <(find "$dir" -name '*.trs')
    fi
    read -r c cf < <(cat "${sources[@]}" /dev/null |
        sed -nE 's/.*Checks: ([0-9]+), Failures: ([0-9]+), Errors: ([0-9]+).*/\1 \2 \3/p' |
        awk '{ c += $1; f += $2 + $3 } END { print c + 0, f + 0 }')
    checks=$((checks + c))
    check_failures=$((check_failures + cf))

    if ((rc != 0)) && [[ -f $dir/test-suite.log ]]; then
        echo "---- $dir/test-suite.log"
        cat "$dir/test-suite.log"
    fi
    return "$rc"
}

# chaos_in DIR [VAR=VALUE...]: the seeded chaos runs of tests/chaos in that build, each
# for CHAOS_SECONDS (default 20) with a fresh seed (printed; CHAOS_SEED replays one):
# `make chaos` against a real netd, `make chaos-lib` on the library alone.
chaos_in() {
    local dir=$1 target rc=0 out
    shift
    for target in chaos chaos-lib; do
        out=$dir/$target.out
        if env "$@" make -C "$dir" -j"$JOBS" "$target" SECONDS="${CHAOS_SECONDS:-20}" \
            SEED="${CHAOS_SEED:-}" 2>&1 | tee "$out"; then
            echo "PASS: $dir $target"
            passed=$((passed + 1))
        else
            echo "FAIL: $dir $target (the seed and a replay command are above; log: $out)"
            failed=$((failed + 1))
            rc=1
        fi
    done
    return "$rc"
}

# format_check_in DIR: `make format-check` there, tallied like a test program.
format_check_in() {
    if make -C "$1" format-check; then
        echo "PASS: format-check"
        passed=$((passed + 1))
    else
        echo "FAIL: format-check (the files are listed above; 'make format' rewrites them)"
        failed=$((failed + 1))
        return 1
    fi
}

cmd_test() {
    local status=0

    ensure_packages "${PACKAGES[@]}"
    bootstrap
    configure_in build --enable-werror
    format_check_in build || status=1
    check_in build || status=1

    configure_in build-asan --enable-asan --enable-werror
    check_in build-asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 || status=1
    chaos_in build-asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 || status=1

    # Every suite again under ThreadSanitizer: the data races they could hide (netd's own
    # worker threads included), then the chaos runs.
    configure_in build-tsan --enable-tsan --enable-werror
    check_in build-tsan TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 || status=1
    chaos_in build-tsan TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 || status=1

    echo "Check test cases: $checks run, $check_failures failed (all builds)"
    echo "$passed passed, $failed failed"
    return "$status"
}

cmd_run() {
    build
    mkdir -p run
    echo
    echo "netd with conf/netd.json: echo (greeting \"hello\") on 127.0.0.1:8124 and run/echo.sock."
    echo "Try it from another terminal:"
    echo "    nc 127.0.0.1 8124                      # or: build/examples/echo-client"
    echo "    build/src/ctl/netctl -s run/netd.sock servers"
    echo "(Ctrl-C drains and stops it.)"
    echo
    exec build/src/daemon/netd -f -c conf/netd.json "$@"
}

cmd_lint() {
    ensure_packages "${PACKAGES[@]}" cppcheck clang-tidy
    bootstrap
    configure_in build --enable-werror
    make -C build lint
}

(($# >= 1)) || usage
command=$1
shift
case $command in
run) cmd_run "$@" ;;
test) cmd_test ;;
lint) cmd_lint ;;
*) usage ;;
esac
