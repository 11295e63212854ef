#!/usr/bin/env bash
# soak.sh: runs nomq-harness over and over on a loaded machine, the acceptance test for
# "passes on a busy 2-core CI box".
#
# Usage: scripts/soak.sh [--runs N] [--mode-runs M] [--modes LIST] [--timeout SECS]
#                        [--no-load] [--logs DIR]
#
#   --runs N       loopback runs in a row (default 20)
#   --mode-runs M  runs of each other mode (default 3)
#   --modes LIST   comma-separated modes, in order (default loopback,lossy,broadcast,tap);
#                  broadcast and tap need root and iproute2 (they build their own network
#                  namespaces; elsewhere they print SKIP, counted in the "skipped" column)
#   --timeout S    bound of one run, in seconds (default 180)
#   --no-load      do not start the CPU hogs
#   --logs DIR     keep every run's output in DIR (default: a temporary directory,
#                  removed at the end unless a run failed)
#
# It builds the harness once in release, starts one CPU hog per core (`yes > /dev/null`,
# killed by PID on exit), runs each mode the given number of times, each run bounded by
# `timeout`, records pass/fail and wall time per run, prints a summary table (mode, runs,
# passed, skipped, median and max seconds) and exits 1 if any run failed (2 for a usage
# error). Failed runs' FAIL lines are printed as they happen.
set -euo pipefail

runs=20
mode_runs=3
modes="loopback,lossy,broadcast,tap"
run_timeout=180
load=1
logs=""

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
        --mode-runs) mode_runs="${2:?--mode-runs needs a number}"; shift 2 ;;
        --modes) modes="${2:?--modes needs a list}"; shift 2 ;;
        --timeout) run_timeout="${2:?--timeout needs seconds}"; shift 2 ;;
        --no-load) load=0; shift ;;
        --logs) logs="${2:?--logs needs a directory}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "soak.sh: unknown argument $1" >&2; usage ;;
    esac
done
for n in "$runs" "$mode_runs" "$run_timeout"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "soak.sh: not a number: $n" >&2; exit 2; }
done

cd "$(dirname "$0")/.."

hogs=()
tmp_logs=0
cleanup() {
    local pid
    for pid in "${hogs[@]+"${hogs[@]}"}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${hogs[@]+"${hogs[@]}"}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $tmp_logs == 1 && ${failed_total:-0} == 0 ]]; then
        rm -rf "$logs"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "$logs" ]]; then
    logs="$(mktemp -d "${TMPDIR:-/tmp}/nomq-soak.XXXXXX")"
    tmp_logs=1
fi
mkdir -p "$logs"

echo "soak: building nomq-harness (release)"
cargo build --release -p nomq-harness
exe="$PWD/target/release/nomq-harness"

if [[ $load == 1 ]]; then
    cores="$(nproc)"
    for ((i = 0; i < cores; i++)); do
        yes > /dev/null &
        hogs+=("$!")
    done
    echo "soak: $cores CPU hog(s) running (PIDs ${hogs[*]})"
fi

failed_total=0
summary=()

# Runs one mode $2 times; appends its summary row.
soak_mode() {
    local mode="$1" count="$2" k rc start end secs passed=0 skipped=0 times=() log last
    for ((k = 1; k <= count; k++)); do
        log="$logs/$mode-$k.log"
        start="$(date +%s.%N)"
        rc=0
        timeout --kill-after=10 "$run_timeout" "$exe" "$mode" > "$log" 2>&1 || rc=$?
        end="$(date +%s.%N)"
        secs="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
        times+=("$secs")
        last="$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1 || true)"
        if [[ $rc == 0 ]]; then
            passed=$((passed + 1))
            if [[ "$last" == *skipped* ]]; then
                skipped=$((skipped + 1))
            fi
            printf 'soak: %-9s run %2d/%d  PASS  %6ss  %s\n' "$mode" "$k" "$count" "$secs" "$last"
        else
            failed_total=$((failed_total + 1))
            [[ $rc == 124 || $rc == 137 ]] && last="timed out after ${run_timeout}s"
            printf 'soak: %-9s run %2d/%d  FAIL  %6ss  %s (exit %d, log %s)\n' \
                "$mode" "$k" "$count" "$secs" "${last:-no summary}" "$rc" "$log"
            grep -E '^FAIL ' "$log" | sed 's/^/soak:     /' || true
        fi
    done
    local stats
    stats="$(printf '%s\n' "${times[@]}" | sort -n | awk '
        { t[NR] = $1 }
        END {
            if (NR == 0) { print "- -"; exit }
            m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
            printf "%.1f %.1f", m, t[NR]
        }')"
    summary+=("$mode $count $passed $skipped $stats")
}

IFS=',' read -r -a mode_list <<< "$modes"
for mode in "${mode_list[@]}"; do
    case "$mode" in
        loopback) soak_mode loopback "$runs" ;;
        lossy|broadcast|tap) soak_mode "$mode" "$mode_runs" ;;
        *) echo "soak.sh: unknown mode $mode" >&2; exit 2 ;;
    esac
done

echo
printf '%-10s %5s %7s %8s %9s %7s\n' MODE RUNS PASSED SKIPPED MEDIAN_S MAX_S
for row in "${summary[@]}"; do
    read -r mode count passed skipped median max <<< "$row"
    printf '%-10s %5s %7s %8s %9s %7s\n' "$mode" "$count" "$passed" "$skipped" "$median" "$max"
done
load_note="no load"
[[ $load == 1 ]] && load_note="${#hogs[@]} CPU hog(s)"
echo "soak: $failed_total failed run(s); $load_note; logs in $logs"
[[ $failed_total == 0 ]]
