#!/usr/bin/env bash
# bench/dashboards.sh: do open dashboards cost the cache-hit path anything?
#
#   bash bench/dashboards.sh     # ROUNDS=6 DURATION=4 DASHBOARDS=20 CONNS=50
#
# moat (one worker, its admin API and dashboard on loopback; the whole process on SERVER_CPU)
# in front of nginx (CLIENT_CPU) answering 1 KiB with Cache-Control: public, max-age=3600; wrk
# (-t1 -cCONNS, CLIENT_CPU) GETs one URL, always a hit. Each round measures it twice, without
# dashboards (A) and with DASHBOARDS streams of GET /events open (B, bench/lib/sse_hold.py on
# CLIENT_CPU, each getting its snapshot a second), in an order that alternates from round to
# round. Reported per run: hits per CPU-second of moat (all its threads: the worker and the
# control thread that builds and sends the snapshots), and per round the ratio B / A; then
# the median ratio and its range. The issue's bar: no change beyond noise.
# Output: a markdown table on stdout and bench/out/dashboards-<stamp>/table.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3
BENCH=dashboards
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-4}
DASHBOARDS=${DASHBOARDS:-20}
CONNS=${CONNS:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
MOAT=${MOAT:-$ROOT/moat}

# shellcheck source=bench/lib/common.sh
. "$HERE/lib/common.sh"
for tool in wrk nginx curl taskset; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps)"
done
[ -x "$MOAT" ] || die "$MOAT is missing (make)"
bench_setup dashboards

start_origin "$(head -c 1023 /dev/zero | tr '\0' x)"
SPORT=$(free_port)
APORT=$(free_port)
mkdir -p "$TMP/moat"
cat >"$TMP/moat/moat.yaml" <<YAML
listen: "127.0.0.1:$SPORT"
workers: 1
admin: { listen: "127.0.0.1:$APORT", dashboard_clients: $((DASHBOARDS + 1)) }
cache: { memory: 64MiB }
pools: { origin: { origins: ["127.0.0.1:$OPORT"] } }
sites: [{ hosts: ["*"], pool: origin }]
YAML
start "$TMP/moat/moat.log" "$SERVER_CPU" "$MOAT" -c "$TMP/moat/moat.yaml"
MPID=$LASTPID
wait_port "$MPID" "$SPORT" || die "moat did not start"
wait_port "$MPID" "$APORT" || die "moat's admin API did not start"
URL="http://127.0.0.1:$SPORT/hit"
curl -s -o /dev/null "$URL" && curl -s -o /dev/null "$URL"
TCK=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$MPID/stat"; }

run() { # KIND (A or B): prints hits per CPU-second
  local kind=$1 hold=""
  if [ "$kind" = B ]; then
    start "$TMP/sse.log" "$CLIENT_CPU" $PY "$HERE/lib/sse_hold.py" "$APORT" "$DASHBOARDS"
    hold=$LASTPID
    for _ in $(seq 1 50); do
      [ "$(moat_metric moat_dashboard_clients)" = "$DASHBOARDS" ] && break
      sleep 0.1
    done
    [ "$(moat_metric moat_dashboard_clients)" = "$DASHBOARDS" ] || die "the streams did not open"
  else
    [ "$(moat_metric moat_dashboard_clients)" = 0 ] || die "streams still open in an A run"
  fi
  local t0 t1
  t0=$(ticks)
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "$URL" >"$TMP/wrk-$kind.log"
  t1=$(ticks)
  [ -n "$hold" ] && { stop_group "$hold"; sleep 0.3; }
  local reqs
  reqs=$(awk '/requests in/ { print $1 }' "$TMP/wrk-$kind.log")
  grep -q "Non-2xx" "$TMP/wrk-$kind.log" && die "non-2xx answers: $TMP/wrk-$kind.log"
  awk -v r="$reqs" -v t=$((t1 - t0)) -v hz="$TCK" 'BEGIN { printf "%.0f\n", r / (t / hz) }'
}

snap0=$(moat_metric moat_dashboard_snapshots_total)
rows=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then a=$(run A); b=$(run B); else b=$(run B); a=$(run A); fi
  rows+=("$r $a $b")
  log "round $r: $a hits/CPU-s without dashboards, $b with $DASHBOARDS"
done
snap1=$(moat_metric moat_dashboard_snapshots_total)
misses=$(moat_metric moat_cache_misses_total)

printf '%s\n' "${rows[@]}" >"$TMP/rows"
$PY - "$DASHBOARDS" "$snap0" "$snap1" "$misses" "$TMP/rows" <<'PYEOF' | tee "$OUT/table.md"
import statistics, sys
n, s0, s1, misses = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = [tuple(map(float, l.split())) for l in open(sys.argv[5]) if l.strip()]
print(f"| round | hits per CPU-second, no dashboard | with {n} dashboards | ratio |")
print("|--:|--:|--:|--:|")
ratios = []
for r, a, b in rows:
    ratios.append(b / a)
    print(f"| {int(r)} | {a:,.0f} | {b:,.0f} | {b / a:.3f} |")
print()
print(f"median ratio {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); "
      f"snapshots built meanwhile: {s1 - s0:.0f}; cache misses in all: {misses}")
PYEOF
