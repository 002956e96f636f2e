#!/usr/bin/env bash
# bench/purge.sh: does a purge of a million cached objects stall request handling?
#
#   bash bench/purge.sh     # COUNT=1000000 PURGE='{"prefix": "http://bench/p/"}'
#
# moat (one worker, cache.memory MEMORY, admin API on loopback; the whole process on
# SERVER_CPU) is filled through HTTP with COUNT objects /p/0 .. /p/COUNT-1 (Host: bench) by
# bench/lib/fill.py on CLIENT_CPU. The origin (nginx on CLIENT_CPU) answers any path with the
# same BODY_BYTES and Cache-Control: public, max-age=3600, plus Surrogate-Key: bulk under /p/
# and hot under /hot/ (so PURGE='{"tag": "bulk"}' works too). Then wrk (-t1 -cCONNS --latency,
# CLIENT_CPU) GETs HOT always-hit URLs /hot/0 .. /hot/HOT-1, outside the purged set:
#   1. baseline: wrk starts, LEAD seconds later the script sleeps BASELINE seconds, TAIL
#      seconds after that wrk is stopped (SIGINT: wrk then reports what it measured so far);
#   2. during the purge: the same, with `POST /purge PURGE` to the admin API (timed) instead of
#      the sleep, so the window is LEAD + purge + TAIL.
# Reported: moat_cache_objects before and after, the admin call's wall time, the CPU the
# control thread (which runs the purge) and the worker used during it, and req/s, p50, p99 and
# max latency of both windows. Checked: the fill reached the origin COUNT times, every wrk
# response was a 200 (the hot URLs stayed hits: the origin saw none of them), the purge
# removed COUNT objects (prefix, tag or host; `all` also takes the HOT ones, which are then
# refetched once), a purged URL is a miss afterwards.
# PERF=1 also records a profile of moat during the purge call (bench/out/purge-<stamp>/perf.data),
# PERF=sched the scheduling of SERVER_CPU (sched.data: `perf sched latency -i sched.data`).
# Output: a markdown table on stdout and bench/out/purge-<stamp>/{table.md,result.json,...}.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3
BENCH=purge
COUNT=${COUNT:-1000000}
BODY_BYTES=${BODY_BYTES:-64}
MEMORY=${MEMORY:-4GiB}
HOT=${HOT:-8}
PURGE=${PURGE:-'{"prefix": "http://bench/p/"}'}
BASELINE=${BASELINE:-1.5}
LEAD=${LEAD:-0.2}
TAIL=${TAIL:-0.1}
CONNS=${CONNS:-50}
FILL_CONNS=${FILL_CONNS:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
MOAT=${MOAT:-$ROOT/moat}

# shellcheck source=bench/lib/common.sh
. "$HERE/lib/common.sh"
bench_setup purge

for tool in wrk nginx curl taskset; do
  command -v "$tool" >/dev/null || die "$tool is missing (see scripts/install-deps)"
done
[ -x "$MOAT" ] || die "$MOAT is not built (make)"

# ---- origin: nginx, any path -> BODY_BYTES from memory, cacheable for an hour ---------------
BODY=$($PY -c 'import sys; print("b" * (int(sys.argv[1]) - 1), end="")' "$BODY_BYTES")
start_origin "$BODY" "location /p/ {
            add_header Cache-Control \"public, max-age=3600\";
            add_header Surrogate-Key bulk;
            return 200 \"$BODY\\n\";
        }
        location /hot/ {
            add_header Cache-Control \"public, max-age=3600\";
            add_header Surrogate-Key hot;
            return 200 \"$BODY\\n\";
        }"

# ---- moat ------------------------------------------------------------------------------------
SPORT=$(free_port)
start_moat "$TMP/moat" "$MEMORY"
MPID=$LASTPID
wait_port "$MPID" "$SPORT" || { tail -n 20 "$TMP/moat/moat.log" >&2; die "moat did not start"; }
wait_port "$MPID" "$APORT" || die "moat's admin API did not start"
# CPU ticks (utime + stime) of thread TID of moat
ticks() { awk '{ print $14 + $15 }' "/proc/$MPID/task/$1/stat"; }
for t in "/proc/$MPID/task/"*; do # moat's threads: the control thread (MPID) and the worker
  [ "${t##*/}" = "$MPID" ] || WORKER_TID=${t##*/}
done
cache_status() { curl -s -o /dev/null -D - --max-time 5 -H "Host: $2" "http://127.0.0.1:$SPORT$1" | tr -d '\r' | awk -F': ' 'tolower($1) == "cache-status" { print $2 }'; }

# ---- the hot URLs, then the fill ---------------------------------------------------------------
for ((k = 0; k < HOT; k++)); do
  cache_status "/hot/$k" "127.0.0.1:$SPORT" >/dev/null
  case "$(cache_status "/hot/$k" "127.0.0.1:$SPORT")" in
    *"; hit"*) ;;
    *) die "/hot/$k is not a hit on its second request" ;;
  esac
done
o0=$(origin_reqs)
log "filling $COUNT objects of $BODY_BYTES bytes over $FILL_CONNS connections"
fill=$(taskset -c "$CLIENT_CPU" $PY "$HERE/lib/fill.py" "$SPORT" /p/ "$COUNT" "$FILL_CONNS" "$BODY_BYTES")
o1=$(origin_reqs)
log "fill: $fill; origin requests $((o1 - o0 - 1))"
objs0=$(moat_metric moat_cache_objects)
bytes0=$(moat_metric moat_cache_bytes)
purged0=$(moat_metric moat_cache_purged_total)

# ---- the two wrk windows ------------------------------------------------------------------
# Both the same way, so that wrk's start and stop weigh alike: wrk starts, LEAD seconds later
# the action runs, TAIL seconds after it ends wrk gets SIGINT and reports.
WRK=(wrk -t1 -c"$CONNS" --latency --timeout 5s -s "$HERE/lua/hot.lua" "http://127.0.0.1:$SPORT/")
export HOT_URLS=$HOT
window() { # NAME CMD...: the wrk output lands in $TMP/wrk-NAME.log
  local name=$1 wpid
  shift
  start "$TMP/wrk-$name.log" "$CLIENT_CPU" "${WRK[@]}" -d300s
  wpid=$LASTPID
  sleep "$LEAD"
  "$@"
  sleep "$TAIL"
  kill -INT "$wpid"
  for _ in $(seq 100); do kill -0 "$wpid" 2>/dev/null || break; sleep 0.1; done
  wait "$wpid" 2>/dev/null || true
}
purge() {
  local perf=""
  case "${PERF:-}" in # profile moat (all its threads), or SERVER_CPU's scheduling, meanwhile
    1) start "$TMP/perf.log" "$CLIENT_CPU" perf record -q -F 2000 --call-graph dwarf,16384 \
      -o "$OUT/perf.data" -p "$MPID" ;;
    sched) start "$TMP/perf.log" "$CLIENT_CPU" perf sched record -C "$SERVER_CPU" -o "$OUT/sched.data" ;;
  esac
  if [ -n "${PERF:-}" ]; then
    perf=$LASTPID
    sleep 0.5
  fi
  c0=$(ticks "$MPID")
  w0=$(ticks "$WORKER_TID")
  ptime=$(taskset -c "$CLIENT_CPU" curl -s -o "$TMP/purge-reply.json" -w '%{time_total}' \
    --max-time 600 -X POST -H 'Content-Type: application/json' -d "$PURGE" \
    "http://127.0.0.1:$APORT/purge")
  c1=$(ticks "$MPID")
  w1=$(ticks "$WORKER_TID")
  if [ -n "$perf" ]; then
    kill -INT "$perf"
    wait "$perf" || true
  fi
}
log "baseline window: wrk, ${LEAD}s + ${BASELINE}s + ${TAIL}s"
oh0=$(origin_reqs)
window baseline sleep "$BASELINE"
log "purge window: wrk, ${LEAD}s, POST /purge $PURGE, ${TAIL}s"
window purge purge
oh1=$(origin_reqs)

objs1=$(moat_metric moat_cache_objects)
bytes1=$(moat_metric moat_cache_bytes)
purged1=$(moat_metric moat_cache_purged_total)
after_hot=$(cache_status /hot/0 "127.0.0.1:$SPORT")
after_purged=$(cache_status /p/0 bench)
alive=1
kill -0 "$MPID" 2>/dev/null || alive=0

$PY - "$OUT/result.json" <<EOF | tee "$OUT/table.md"
import json, re, sys
def wrk(path):
    m = re.search(r"WRKJSON (\{.*\})", open(path).read())
    return json.loads(m.group(1)) if m else None
base, during = wrk("$TMP/wrk-baseline.log"), wrk("$TMP/wrk-purge.log")
fill = json.loads('''$fill''')
reply = json.load(open("$TMP/purge-reply.json"))
count, hot, tck = $COUNT, $HOT, 100.0
r = dict(count=count, body_bytes=$BODY_BYTES, purge=json.loads('''$PURGE'''), fill=fill,
         origin_fill=$((o1 - o0 - 1)), objects_before=int(float("$objs0")),
         objects_after=int(float("$objs1")), bytes_before=int(float("$bytes0")),
         bytes_after=int(float("$bytes1")), purged_metric=int(float("$purged1")) - int(float("$purged0")),
         reply=reply, purge_s=float("$ptime"), control_cpu_s=($c1 - $c0) / tck,
         worker_cpu_s=($w1 - $w0) / tck, origin_during_wrk=$((oh1 - oh0 - 1)),
         hot_after="$after_hot", purged_after="$after_purged", baseline=base, during=during)
why = []
if not $alive: why.append("moat died")
if fill["ok"] != count: why.append(f"fill: {fill['ok']} of {count} ok")
if r["origin_fill"] != count: why.append(f"fill: origin saw {r['origin_fill']} requests")
for name, w in (("baseline", base), ("purge window", during)):
    if not w: why.append(f"{name}: no wrk result"); continue
    errs = sum(w[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    if errs: why.append(f"{name}: {errs} wrk errors")
if not reply.get("ok"): why.append(f"purge failed: {reply}")
everything = "all" in r["purge"]
if not everything and reply.get("purged") != count: why.append(f"purged {reply.get('purged')}, expected {count}")
if not everything and r["origin_during_wrk"] != 0: why.append(f"the origin saw {r['origin_during_wrk']} requests during wrk")
if not everything and r["objects_after"] != r["objects_before"] - count: why.append("moat_cache_objects did not drop by COUNT")
if "; hit" not in r["hot_after"] and not everything: why.append(f"/hot/0 after the purge: {r['hot_after']}")
if "fwd=" not in r["purged_after"]: why.append(f"/p/0 after the purge: {r['purged_after']!r}, expected a miss")
r["ok"], r["why"] = not why, "; ".join(why)
json.dump(r, open(sys.argv[1], "w"), indent=1)

print(f"moat_cache_objects {r['objects_before']:,} -> {r['objects_after']:,} "
      f"(moat_cache_bytes {r['bytes_before'] / 2**20:,.1f} -> {r['bytes_after'] / 2**20:,.1f} MiB); "
      f"POST /purge {json.dumps(r['purge'])}: {reply.get('purged', 0):,} purged in {r['purge_s']:.3f} s wall, "
      f"control thread {r['control_cpu_s']:.2f} s CPU, worker {r['worker_cpu_s']:.2f} s CPU meanwhile "
      f"(fill: {fill['elapsed_s']:.0f} s)\n")
print("| window | seconds | requests | req/s | p50 | p99 | max |")
print("|---|--:|--:|--:|--:|--:|--:|")
for name, w in (("baseline", base), ("during the purge", during)):
    if w:
        s = w["duration_us"] / 1e6
        print(f"| {name} | {s:.2f} | {w['requests']:,} | {w['requests'] / s:,.0f} | {w['p50_us'] / 1000:.2f} ms "
              f"| {w['p99_us'] / 1000:.2f} ms | {w['max_us'] / 1000:.2f} ms |")
print("\nok" if r["ok"] else "\nFAILED: " + r["why"])
EOF
log "results: $OUT"
[ "$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$OUT/result.json")" = True ]
