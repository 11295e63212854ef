#!/usr/bin/env bash
# Fan-in: N `nomq pub -l -q 1` processes, 20 000 64-byte lines each, into one `nomq sub`
# on 127.0.0.1, with `perf stat` counting the subscriber's receive system calls, epoll
# waits and CPU time (task-clock, ms). With --out, fan-out instead: one `nomq pub -l -q 1`
# of 20 000 lines to N `nomq sub` (its static peers), perf stat on the publisher and its
# send system calls. Compares binaries given as arguments, alternating:
#
#   scripts/fanin.sh [--out] [--publishers N] [--rounds R] NOMQ_BINARY...
#
# Needs linux-perf (Debian `linux-perf`) with syscall tracepoints (root). Loopback only.
set -euo pipefail
N=8 ROUNDS=3 OUT=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=1; shift;;
        --publishers) N=$2; shift 2;;
        --rounds) ROUNDS=$2; shift 2;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
        *) break;;
    esac
done
[ $# -ge 1 ] || { echo "fanin.sh: give at least one nomq binary" >&2; exit 2; }
command -v perf >/dev/null || { echo "fanin.sh: perf not found (apt-get install linux-perf)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$1" keys gen -o "$WORK/k.json" --force >/dev/null
for i in $(seq 1 20000); do printf 'reading %056d\n' "$i"; done > "$WORK/lines.txt"
port=$((40000 + RANDOM % 10000))
if [ "$OUT" = 1 ]; then
    EVENTS=syscalls:sys_enter_sendto,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_epoll_wait,task-clock
    printf '%-40s %8s %10s %10s %10s %10s\n' binary secs sendto sendmmsg epoll_wait cpu_ms
else
    EVENTS=syscalls:sys_enter_recvfrom,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_epoll_wait,task-clock
    printf '%-40s %8s %10s %10s %10s %10s\n' binary secs recvfrom recvmmsg epoll_wait cpu_ms
fi
# `pub` and `sub` of one process, under perf stat when it is the measured side.
run() { # measured? bin args...
    local m=$1; shift
    if [ "$m" = 1 ]; then perf stat -x, -o "$WORK/perf.txt" -e "$EVENTS" timeout 120 "$@"
    else timeout 110 "$@"; fi
}
for r in $(seq 1 "$ROUNDS"); do
    for bin in "$@"; do
        port=$((port + N + 1)); one=$port; peers=
        for i in $(seq 1 "$N"); do peers="$peers${peers:+,}127.0.0.1:$((one + i))"; done
        pids=()
        if [ "$OUT" = 1 ]; then
            # N subscribers of 20 000 each, then the one publisher (measured).
            for i in $(seq 1 "$N"); do
                run 0 "$bin" sub --keys "$WORK/k.json" --bind "127.0.0.1:$((one + i))" \
                    --peer "127.0.0.1:$one" -c 'fan/#' -C 20000 -W 100 >/dev/null 2>>"$WORK/sub.err" &
                pids+=($!)
            done
            sleep 0.5
            start=$(date +%s.%N)
            rc=0
            run 1 "$bin" pub --keys "$WORK/k.json" --bind "127.0.0.1:$one" --peer "$peers" \
                -q 1 -c fan/out -l <"$WORK/lines.txt" >/dev/null 2>"$WORK/pub.err" || rc=$?
            for p in "${pids[@]}"; do wait "$p" || rc=$?; done
            end=$(date +%s.%N)
            [ "$rc" -eq 0 ] || { echo "fanin.sh: $bin exited $rc" >&2; cat "$WORK/pub.err" "$WORK/sub.err" >&2; exit 3; }
        else
            run 1 "$bin" sub --keys "$WORK/k.json" --bind "127.0.0.1:$one" --peer "$peers" \
                -c 'fan/#' -C $((N * 20000)) -W 100 >/dev/null 2>"$WORK/sub.err" &
            spid=$!
            sleep 0.5
            start=$(date +%s.%N)
            for i in $(seq 1 "$N"); do
                run 0 "$bin" pub --keys "$WORK/k.json" --bind "127.0.0.1:$((one + i))" \
                    --peer "127.0.0.1:$one" -q 1 -c "fan/$i" -l <"$WORK/lines.txt" >/dev/null 2>>"$WORK/pub.err" &
                pids+=($!)
            done
            rc=0; wait "$spid" || rc=$?
            end=$(date +%s.%N)
            for p in "${pids[@]}"; do wait "$p" || true; done
            [ "$rc" -eq 0 ] || { echo "fanin.sh: $bin sub exited $rc" >&2; cat "$WORK/sub.err" >&2; exit 3; }
        fi
        awk -F, -v b="$bin" -v s="$start" -v e="$end" '
            /_enter_(recvfrom|sendto)/ {a=$1} /_enter_(recvmmsg|sendmmsg)/ {m=$1} /epoll_wait/ {ep=$1} /task-clock/ {cpu=$1}
            END {printf "%-40s %8.2f %10s %10s %10s %10.0f\n", b, e - s, a, m, ep, cpu}' "$WORK/perf.txt"
    done
done
