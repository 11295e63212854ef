#!/usr/bin/env bash
# NoMQ against raw UDP, Cyclone DDS (ddsperf) and mosquitto (MQTT), side by side on this
# machine, over loopback only. See README.md ("Performance").
#
#   scripts/compare.sh [--rounds N] [--quick] [--json] [--sweep]
#
# Installs cyclonedds-tools, mosquitto (and gnuplot-nox for --sweep) with apt if missing,
# builds the release binaries once, then runs N rounds (default 3); within each round the
# systems take turns (the order rotates every round): `nomq bench` (raw UDP, NoMQ QoS 0,
# QoS 1 windowed, QoS 1 round trip), ddsperf pub/sub reliable and best effort, ddsperf
# ping/pong, mosquitto with the mqtt_bench client (nomq-host/examples/mqtt_bench.rs), and
# plain UDP ping-pong (nomq-host/examples/udp_pingpong.rs: the round-trip floor).
# Prints one table of medians and the ratios of issue 12's goals; --json prints one JSON
# object instead. --sweep instead runs one round over payload sizes 16 B .. 8 KiB and
# writes docs/img/throughput.png (gnuplot).
#
# Network: 127.0.0.1 only. Cyclone DDS gets a CYCLONEDDS_URI with AllowMulticast=false,
# interface lo and the unicast peer 127.0.0.1; the script counts the namespace's
# outgoing multicast and broadcast packets (IpExt OutMcastPkts/OutBcastPkts) over the DDS
# runs and reports the difference. mosquitto listens on 127.0.0.1 on a free port with its
# own configuration. Every process started here is stopped by PID on exit; every run is
# bounded by `timeout`.
set -euo pipefail

ROUNDS=3
QUICK=0
JSON=0
SWEEP=0
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds)
            [ $# -ge 2 ] || { echo "compare.sh: --rounds needs a number" >&2; exit 2; }
            case "$2" in ''|*[!0-9]*) echo "compare.sh: --rounds $2: not a number" >&2; exit 2;; esac
            [ "$2" -ge 1 ] && [ "$2" -le 20 ] || { echo "compare.sh: --rounds $2 is outside 1..=20" >&2; exit 2; }
            ROUNDS=$2; shift 2;;
        --quick) QUICK=1; shift;;
        --json) JSON=1; shift;;
        --sweep) SWEEP=1; shift;;
        -h|--help) usage; exit 0;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
log() { if [ "$JSON" = 1 ]; then echo "$*" >&2; else echo "$*"; fi; }

# --- tools -------------------------------------------------------------------------------
need=()
command -v ddsperf >/dev/null 2>&1 || need+=(cyclonedds-tools)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
[ "$SWEEP" = 0 ] || command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} with apt"
    if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
    timeout 600 "${SUDO[@]}" apt-get install -y "${need[@]}" >&2 ||
        { timeout 300 "${SUDO[@]}" apt-get update >&2 && timeout 600 "${SUDO[@]}" apt-get install -y "${need[@]}" >&2; }
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
command -v python3 >/dev/null 2>&1 || { echo "compare.sh: python3 is needed for the summary" >&2; exit 2; }

log "building release binaries"
(cd "$ROOT" && timeout 1800 cargo build --release -q -p nomq-host --bin nomq --example mqtt_bench --example udp_pingpong) >&2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
NOMQ=$TARGET/release/nomq
MQTT=$TARGET/release/examples/mqtt_bench
PINGPONG=$TARGET/release/examples/udp_pingpong

# --- processes and cleanup ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/nomq-compare.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$QUICK" = 1 ]; then
    MSGS=50000; SECS=2; SAMPLES=500; DDS_SECS=3
else
    MSGS=500000; SECS=5; SAMPLES=2000; DDS_SECS=6
fi
SIZE=64
WINDOW=256

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Cyclone DDS: unicast on lo only, its own domain id so no other run on this host matches.
DOMAIN=$(( ($$ % 200) + 10 ))
cat > "$WORK/cyclonedds.xml" <<EOF
<CycloneDDS xmlns="https://cdds.io/config">
  <Domain id="any">
    <General>
      <Interfaces><NetworkInterface name="lo" multicast="false"/></Interfaces>
      <AllowMulticast>false</AllowMulticast>
      <DontRoute>true</DontRoute>
    </General>
    <Discovery>
      <ParticipantIndex>auto</ParticipantIndex>
      <Peers><Peer address="127.0.0.1"/></Peers>
    </Discovery>
  </Domain>
</CycloneDDS>
EOF
export CYCLONEDDS_URI="file://$WORK/cyclonedds.xml"

# Outgoing multicast + broadcast packets of this network namespace.
mcast_out() {
    awk '/^IpExt:/ { if (!h) { for (i = 1; i <= NF; i++) n[$i] = i; h = 1 } else { print $n["OutMcastPkts"] + $n["OutBcastPkts"] } }' /proc/net/netstat
}
MCAST_DDS=0

# mosquitto on a free port of 127.0.0.1, started once, stopped by PID on exit.
MQ_PORT=$(free_port)
cat > "$WORK/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_inflight_messages $WINDOW
max_queued_messages 1000000
log_dest file $WORK/mosquitto.log
EOF
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$MQ_PORT") 2>/dev/null; then break; fi
    sleep 0.05
done
(exec 3<>"/dev/tcp/127.0.0.1/$MQ_PORT") 2>/dev/null || { echo "compare.sh: mosquitto did not start on 127.0.0.1:$MQ_PORT" >&2; exit 3; }

# Forget a PID once it was waited for (so the exit trap never signals a reused one).
untrack() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Runs a command in the background and waits for it: a signal to this script then stops
# it at once (the trap's cleanup kills it by PID) instead of after the command ends.
run() {
    "$@" &
    local p=$! rc=0
    PIDS+=($p)
    wait "$p" || rc=$?
    untrack "$p"
    return "$rc"
}

RESULTS=$WORK/results.jsonl
: > "$RESULTS"
# record ROUND SIZE METRIC VALUE
record() { echo "{\"round\":$1,\"size\":$2,\"metric\":\"$3\",\"value\":$4}" >> "$RESULTS"; }

# --- the systems ---------------------------------------------------------------------------
run_nomq() { # ROUND SIZE
    local out=$WORK/nomq.$1.json
    run timeout $((SECS * 8 + 60)) "$NOMQ" bench --json --messages "$MSGS" --samples "$SAMPLES" \
        --size "$2" --window "$WINDOW" --max-seconds "$SECS" > "$out" 2> "$out.err" ||
        { cat "$out.err" >&2; echo "compare.sh: nomq bench failed" >&2; exit 3; }
    python3 - "$out" "$1" "$2" >> "$RESULTS" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])); r, s = int(sys.argv[2]), int(sys.argv[3])
def rec(m, x): print(json.dumps({"round": r, "size": s, "metric": m, "value": x}))
rec("raw_udp", v["raw_udp"]["per_second"])
rec("nomq_qos0", v["nomq_qos0"]["per_second"])
rec("nomq_qos1_window", v["nomq_qos1_window"]["per_second"])
rec("nomq_qos1_rtt_p50_us", v["qos1_rtt"]["p50_us"])
for ph in ("raw_udp", "nomq_qos0", "nomq_qos1_window"):
    rx = v[ph]["receiver"]
    rec(ph + "_rcvbuf_errors", rx.get("udp_rcvbuf_errors") or 0)
    rec(ph + "_rss_growth_kib", (rx.get("rss_end_kib") or 0) - (rx.get("rss_start_kib") or 0))
    if "engine_drops" in rx:
        rec(ph + "_engine_drops", rx["engine_drops"])
        # QoS 1 messages the subscriber's full stream refused (retransmitted, not lost).
        rec(ph + "_app_deferred", rx["app_deferred"])
        rec(ph + "_app_dropped", rx["app_dropped"])
for ph in ("raw_udp", "nomq_qos0", "nomq_qos1_window"):
    if v[ph]["cut"]: print("note: nomq bench %s cut at the time limit" % ph, file=sys.stderr)
PY
}

# ddsperf sub + pub: the subscriber's per-second rates while the publisher ran.
run_dds_pubsub() { # ROUND SIZE METRIC [-u]
    local flags=(-i "$DOMAIN" ${4:+"$4"})
    local sub=$WORK/dds-sub.txt before after
    before=$(mcast_out)
    timeout $((DDS_SECS + 10)) ddsperf "${flags[@]}" -D $((DDS_SECS + 1)) sub > "$sub" 2>&1 &
    local sp=$!
    PIDS+=($sp)
    sleep 0.3
    run timeout $((DDS_SECS + 10)) ddsperf "${flags[@]}" -D "$DDS_SECS" pub size "$2" > "$WORK/dds-pub.txt" 2>&1 || true
    wait "$sp" || true
    untrack "$sp"
    after=$(mcast_out)
    MCAST_DDS=$((MCAST_DDS + after - before))
    python3 - "$sub" "$1" "$2" "$3" "$DDS_SECS" >> "$RESULTS" <<'PY'
import json, re, statistics, sys
path, r, s, m, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
pat = re.compile(r"^\[\d+\] ([\d.]+)\s+size \d+ total \d+ lost (\d+) delta \d+ lost \d+ rate ([\d.]+) kS/s")
rates, lost = [], 0
for line in open(path):
    g = pat.match(line)
    if g:
        lost = int(g.group(2))
        # Whole seconds while the publisher ran (discovery takes part of the first one).
        if 2.0 <= float(g.group(1)) <= secs:
            rates.append(float(g.group(3)) * 1e3)
v = round(statistics.median(rates)) if rates else 0
if not rates: print("note: ddsperf %s printed no rate (see its output)" % m, file=sys.stderr)
print(json.dumps({"round": r, "size": s, "metric": m, "value": v}))
print(json.dumps({"round": r, "size": s, "metric": m + "_lost", "value": lost}))
PY
}

# ddsperf ping + pong. ddsperf prints half the round trip ((now - sent) / 2), so the round
# trip is twice its "50%" figure.
run_dds_ping() { # ROUND SIZE
    local ping=$WORK/dds-ping.txt before after
    before=$(mcast_out)
    timeout $((DDS_SECS + 10)) ddsperf -i "$DOMAIN" -D $((DDS_SECS + 1)) pong > "$WORK/dds-pong.txt" 2>&1 &
    local pp=$!
    PIDS+=($pp)
    sleep 0.3
    run timeout $((DDS_SECS + 10)) ddsperf -i "$DOMAIN" -D "$DDS_SECS" ping size "$2" > "$ping" 2>&1 || true
    wait "$pp" || true
    untrack "$pp"
    after=$(mcast_out)
    MCAST_DDS=$((MCAST_DDS + after - before))
    python3 - "$ping" "$1" "$2" >> "$RESULTS" <<'PY'
import json, re, statistics, sys
path, r, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pat = re.compile(r"size \d+ mean [\d.]+us min [\d.]+us 50% ([\d.]+)us")
p50 = [float(g.group(1)) for g in map(pat.search, open(path)) if g]
v = round(2 * statistics.median(p50), 1) if p50 else 0
if not p50: print("note: ddsperf ping printed no latency (see its output)", file=sys.stderr)
print(json.dumps({"round": r, "size": s, "metric": "dds_rtt_p50_us", "value": v}))
PY
}

run_mqtt() { # ROUND SIZE
    local out=$WORK/mqtt.$1.json
    run timeout $((SECS * 3 + 60)) "$MQTT" --port "$MQ_PORT" --messages "$MSGS" --samples "$SAMPLES" \
        --size "$2" --window "$WINDOW" --max-seconds "$SECS" > "$out" ||
        { echo "compare.sh: mqtt_bench failed (exit $?)" >&2; exit 3; }
    python3 - "$out" "$1" "$2" >> "$RESULTS" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])); r, s = int(sys.argv[2]), int(sys.argv[3])
def rec(m, x): print(json.dumps({"round": r, "size": s, "metric": m, "value": x}))
rec("mqtt_qos0", v["qos0"]["per_second"])
rec("mqtt_qos1_window", v["qos1_window"]["per_second"])
rec("mqtt_qos1_rtt_p50_us", v["qos1_rtt"]["p50_us"])
PY
}

# The floor under every round trip here: plain 64-byte UDP ping-pong, no protocol.
run_udp_ping() { # ROUND SIZE
    local out=$WORK/udp-ping.txt
    run timeout 120 "$PINGPONG" "$SAMPLES" > "$out" ||
        { echo "compare.sh: udp_pingpong failed (exit $?)" >&2; exit 3; }
    python3 - "$out" "$1" "$2" >> "$RESULTS" <<'PY'
import json, re, sys
path, r, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
m = re.search(r"tokio \(2 workers\) ([\d.]+) us, std threads ([\d.]+) us", open(path).read())
if not m: sys.exit("compare.sh: udp_pingpong printed no p50")
print(json.dumps({"round": r, "size": s, "metric": "udp_rtt_tokio_p50_us", "value": float(m.group(1))}))
print(json.dumps({"round": r, "size": s, "metric": "udp_rtt_std_p50_us", "value": float(m.group(2))}))
PY
}

SYSTEMS=(nomq dds_reliable dds_best_effort dds_ping mqtt udp_ping)
run_system() { # NAME ROUND SIZE
    log "  round $2: $1 ($3 B)"
    case "$1" in
        nomq) run_nomq "$2" "$3";;
        dds_reliable) run_dds_pubsub "$2" "$3" dds_reliable;;
        dds_best_effort) run_dds_pubsub "$2" "$3" dds_best_effort -u;;
        dds_ping) run_dds_ping "$2" "$3";;
        mqtt) run_mqtt "$2" "$3";;
        udp_ping) run_udp_ping "$2" "$3";;
    esac
}

# --- sweep -------------------------------------------------------------------------------
if [ "$SWEEP" = 1 ]; then
    SIZES=(16 64 256 1024 4096 8192)
    log "sweep over ${SIZES[*]} B (one round)"
    run timeout $((SECS * 20 + 120)) "$NOMQ" bench --sweep --json --messages "$MSGS" --window "$WINDOW" \
        --max-seconds "$SECS" > "$WORK/sweep.json" 2> "$WORK/sweep.err" ||
        { cat "$WORK/sweep.err" >&2; echo "compare.sh: nomq bench --sweep failed" >&2; exit 3; }
    for s in "${SIZES[@]}"; do
        log "  ddsperf reliable $s B"
        run_dds_pubsub 1 "$s" dds_reliable
        log "  mqtt $s B"
        run timeout $((SECS * 3 + 60)) "$MQTT" --port "$MQ_PORT" --messages "$MSGS" --samples 10 \
            --size "$s" --window "$WINDOW" --max-seconds "$SECS" > "$WORK/mqtt.sweep.$s.json"
    done
    mkdir -p "$ROOT/docs/img"
    python3 - "$WORK" "$RESULTS" "${SIZES[@]}" > "$WORK/sweep.dat" <<'PY'
import json, sys
work, results, sizes = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3:]]
nomq = {row["body_len"]: row for row in json.load(open(work + "/sweep.json"))}
dds = {}
for line in open(results):
    v = json.loads(line)
    if v["metric"] == "dds_reliable": dds[v["size"]] = v["value"]
print("size raw_udp nomq_qos0 nomq_qos1_window dds_reliable mqtt_qos0 mqtt_qos1_window")
for s in sizes:
    m = json.load(open("%s/mqtt.sweep.%d.json" % (work, s)))
    row = nomq[s]
    val = lambda ph: row[ph]["per_second"] if "per_second" in row[ph] else "-"
    cells = [val("raw_udp"), val("nomq_qos0"), val("nomq_qos1_window"), dds.get(s, "-") or "-",
             m["qos0"]["per_second"], m["qos1_window"]["per_second"]]
    print(s, *cells)
PY
    cp "$WORK/sweep.dat" "$ROOT/docs/img/throughput.dat"
    timeout 60 gnuplot <<EOF
set terminal pngcairo size 1200,520 font "DejaVu Sans,10" noenhanced
set output "$ROOT/docs/img/throughput.png"
set datafile missing "-"
set multiplot layout 1,2 title "Loopback, one 2-core machine: NoMQ (encrypted) vs raw UDP, Cyclone DDS, mosquitto (scripts/compare.sh --sweep)"
set logscale x 2
set logscale y 10
set xlabel "payload bytes"
set grid
set key right top
set ylabel "messages/s"
set title "messages per second"
plot for [i=2:7] "$WORK/sweep.dat" using 1:i with linespoints lw 2 title columnhead(i)
set ylabel "MB/s (payload)"
set title "payload megabytes per second"
set key left top
plot for [i=2:7] "$WORK/sweep.dat" using 1:(column(i)*\$1/1e6) with linespoints lw 2 title columnhead(i)
unset multiplot
EOF
    log "wrote docs/img/throughput.png (data: docs/img/throughput.dat)"
    [ "$JSON" = 0 ] || cat "$WORK/sweep.dat" >&2
    [ "$JSON" = 0 ] && column -t "$WORK/sweep.dat"
    log "outgoing multicast/broadcast packets in this namespace during the DDS runs: $MCAST_DDS"
    exit 0
fi

# --- rounds ------------------------------------------------------------------------------
for r in $(seq "$ROUNDS"); do
    n=${#SYSTEMS[@]}
    for i in $(seq 0 $((n - 1))); do
        run_system "${SYSTEMS[$(( (i + r - 1) % n ))]}" "$r" "$SIZE"
    done
done

python3 - "$RESULTS" "$JSON" "$ROUNDS" "$SIZE" "$MCAST_DDS" "$QUICK" <<'PY'
import json, statistics, sys
results, as_json, rounds, size, mcast, quick = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
by = {}
for line in open(results):
    v = json.loads(line)
    by.setdefault(v["metric"], []).append(v["value"])
med = {k: statistics.median(v) for k, v in by.items()}
def ratio(a, b):
    return round(med[a] / med[b], 3) if med.get(a) and med.get(b) else None
ratios = {
    "nomq_qos0 / dds_reliable": (ratio("nomq_qos0", "dds_reliable"), 10),
    "nomq_qos0 / raw_udp": (ratio("nomq_qos0", "raw_udp"), 10),
    "nomq_qos1_window / dds_reliable": (ratio("nomq_qos1_window", "dds_reliable"), 2),
    "nomq_qos1_window / mqtt_qos1_window": (ratio("nomq_qos1_window", "mqtt_qos1_window"), 10),
    "nomq_qos1_rtt_p50 / dds_rtt_p50": (ratio("nomq_qos1_rtt_p50_us", "dds_rtt_p50_us"), None),
}
if as_json:
    print(json.dumps({
        "rounds": rounds, "quick": quick, "body_len": size,
        "medians": med, "samples": by,
        "ratios": {k: {"value": v, "goal_at_least": g} if g else {"value": v, "goal_at_most": 1}
                   for k, (v, g) in ratios.items()},
        "multicast_broadcast_packets_during_dds": mcast,
    }, sort_keys=True))
    sys.exit(0)
rows = [
    ("raw UDP, one datagram per message", "raw_udp", "msg/s"),
    ("NoMQ QoS 0, encrypted", "nomq_qos0", "msg/s"),
    ("NoMQ QoS 1 windowed, every message acked", "nomq_qos1_window", "msg/s"),
    ("NoMQ QoS 1 round trip p50", "nomq_qos1_rtt_p50_us", "µs"),
    ("Cyclone DDS reliable (ddsperf pub/sub)", "dds_reliable", "msg/s"),
    ("Cyclone DDS best effort", "dds_best_effort", "msg/s"),
    ("Cyclone DDS ping-pong round trip p50 (2 x printed)", "dds_rtt_p50_us", "µs"),
    ("mosquitto QoS 0 (rumqttc)", "mqtt_qos0", "msg/s"),
    ("mosquitto QoS 1 windowed (broker PUBACKs)", "mqtt_qos1_window", "msg/s"),
    ("mosquitto QoS 1 ping-pong round trip p50", "mqtt_qos1_rtt_p50_us", "µs"),
    ("plain UDP ping-pong p50, tokio (the floor)", "udp_rtt_tokio_p50_us", "µs"),
    ("plain UDP ping-pong p50, blocking threads", "udp_rtt_std_p50_us", "µs"),
]
def fmt(x):
    return str(int(x)) if float(x).is_integer() else str(x)
print()
print("%d B payloads over loopback, median of %d round(s)%s" % (size, rounds, " (--quick)" if quick else ""))
print("%-52s %12s  %s" % ("system", "median", "all rounds"))
for name, key, unit in rows:
    if key in med:
        print("%-52s %12s  %s" % (name, "%.0f %s" % (med[key], unit) if unit == "msg/s" else "%.1f %s" % (med[key], unit),
                                 " ".join(fmt(x) for x in by[key])))
print()
print("%-40s %9s  %s" % ("ratio", "measured", "goal"))
for k, (v, g) in ratios.items():
    goal = (">= %d" % g) if g else "<= 1"
    print("%-40s %9s  %s" % (k, "-" if v is None else "%.3f" % v, goal))
floor = med.get("udp_rtt_tokio_p50_us")
if floor and med.get("nomq_qos1_rtt_p50_us") and med.get("dds_rtt_p50_us"):
    print("round trip p50 / plain UDP ping-pong p50 (tokio), no goal: NoMQ %.2f, Cyclone DDS %.2f"
          % (med["nomq_qos1_rtt_p50_us"] / floor, med["dds_rtt_p50_us"] / floor))
print()
extra = []
for ph in ("raw_udp", "nomq_qos0", "nomq_qos1_window"):
    for what in ("rcvbuf_errors", "engine_drops", "app_dropped", "app_deferred", "rss_growth_kib"):
        k = "%s_%s" % (ph, what)
        if k in by: extra.append("%s %s" % (k, " ".join(fmt(x) for x in by[k])))
print("receiver (per round): " + "; ".join(extra))
print("ddsperf lost samples (per round): reliable %s, best effort %s" % (by.get("dds_reliable_lost"), by.get("dds_best_effort_lost")))
print("outgoing multicast/broadcast packets in this network namespace during the DDS runs: %d" % mcast)
PY
