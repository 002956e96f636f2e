#!/usr/bin/env bash
# bench/lbflash.sh: a flash crowd on an uncacheable URL against a pool of origins that each take
# at most LIMIT concurrent requests: admission control (moat's max_requests + queue, HAProxy's
# maxconn per server + queue) against none.
#
#   bash bench/lbflash.sh     # ROUNDS=3 CLIENTS=1000 ORIGINS=4 LIMIT=100 DELAY=0.5
#                             # SERVERS="moat moat_queue haproxy haproxy_queue"
#
# The origins (bench/lib/lbflash_origin.py: one asyncio process on CLIENT_CPU serving ORIGINS
# ports, each port an origin with its own capacity) answer a GET after DELAY seconds with
# 1 KiB and Cache-Control: no-store; a GET that arrives while LIMIT requests are in flight at
# that origin is refused at once with 503 (an application server with LIMIT workers and no
# backlog). The client (bench/lib/flash_client.c, on CLIENT_CPU) opens CLIENTS connections to
# the balancer under test (on SERVER_CPU, one worker/thread), sends GET /lbflash/<server>/<round>
# on all of them at once and times every response. The balancers, round robin over the
# ORIGINS origins:
#
# - moat: a pool without limits (moat_queue: `max_requests: LIMIT`, `queue: { size: 5000,
#   timeout: 15s }`);
# - haproxy: balance roundrobin, option redispatch, retries 2 (haproxy_queue: `maxconn LIMIT`
#   on every server, `timeout queue 15s`).
#
# Reported per run: the origins' 503s as a share of the requests they got (origin error rate),
# the clients' answers (200 / 503 / other), the client p50 / p99 / max of the time to a full
# answer (every answer counts, 503s too), and the most requests in flight that any origin saw.
# Output: a markdown table on stdout and in bench/out/lbflash-<stamp>/.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-1000}
ORIGINS=${ORIGINS:-4}
LIMIT=${LIMIT:-100}
DELAY=${DELAY:-0.5}
SERVERS=${SERVERS:-"moat moat_queue haproxy haproxy_queue"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
MOAT=${MOAT:-$ROOT/moat}
SIZE=1024

BENCH=lbflash
# shellcheck source=bench/lib/common.sh
. "$HERE/lib/common.sh"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_setup lbflash

OPORTS=()
for _ in $(seq "$ORIGINS"); do OPORTS+=("$(free_port)"); done
start "$TMP/origins.log" "$CLIENT_CPU" $PY "$HERE/lib/lbflash_origin.py" "$LIMIT" "$DELAY" "$SIZE" "${OPORTS[@]}"
OPID=$LASTPID
for p in "${OPORTS[@]}"; do wait_port "$OPID" "$p" || die "origin on $p did not start"; done
origin_stats() {  # the per-origin figures, JSON
  curl -s --max-time 3 "http://127.0.0.1:${OPORTS[0]}/${1:-__count}"
}

$PY - "$SIZE" "$TMP/body" <<'EOF'
import sys
alpha = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
n = int(sys.argv[1])
open(sys.argv[2], "wb").write(bytes(alpha[(i * 7 + i // 61) % len(alpha)] for i in range(n - 1)) + b"\n")
EOF
cc -O2 -o "$TMP/flash_client" "$HERE/lib/flash_client.c" || die "cannot build bench/lib/flash_client.c"

start_server() {  # NAME: sets SPID SPORT
  local name=$1 dir="$TMP/$1" p list="" servers="" i=0
  SPORT=$(free_port); mkdir -p "$dir"
  for p in "${OPORTS[@]}"; do list+="${list:+, }\"127.0.0.1:$p\""; done
  case "$name" in
    moat|moat_queue)
      {
        cat <<EOF
listen: ["127.0.0.1:$SPORT"]
workers: 1
cache: { enabled: false }
pools:
  o:
    origins: [$list]
    balance: round_robin
EOF
        [ "$name" = moat_queue ] && cat <<EOF
    max_requests: $LIMIT
    queue: { size: 5000, timeout: 15s }
EOF
        echo 'sites: [{ hosts: ["*"], pool: o }]'
      } >"$dir/moat.yaml"
      "$MOAT" -t -c "$dir/moat.yaml" >"$dir/check.log" 2>&1 || { cat "$dir/check.log" >&2; die "moat config invalid"; }
      start "$dir/moat.log" "$SERVER_CPU" "$MOAT" -c "$dir/moat.yaml" ;;
    haproxy|haproxy_queue)
      local maxconn=""
      [ "$name" = haproxy_queue ] && maxconn=" maxconn $LIMIT"
      for p in "${OPORTS[@]}"; do i=$((i + 1)); servers+="    server o$i 127.0.0.1:$p$maxconn
"; done
      cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    maxconn 4000
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue 15s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$SPORT
    default_backend be

backend be
    balance roundrobin
    option redispatch
    retries 2
    http-reuse always
$servers
EOF
      haproxy -c -q -f "$dir/haproxy.cfg" || die "haproxy config invalid"
      start "$dir/stdout.log" "$SERVER_CPU" haproxy -db -f "$dir/haproxy.cfg" ;;
    *) die "unknown server $name" ;;
  esac
  SPID=$LASTPID
  wait_port "$SPID" "$SPORT" || { tail -n 20 "$dir"/*.log >&2; die "$name did not start"; }
}

RES="$OUT/results.jsonl"; : >"$RES"
FAILED=0
for srv in $SERVERS; do
  start_server "$srv"
  sleep 0.5
  for r in $(seq 1 "$ROUNDS"); do
    path="/lbflash/$srv/$r"
    origin_stats __reset >/dev/null
    taskset -c "$CLIENT_CPU" "$TMP/flash_client" "$SPORT" "$path" "$CLIENTS" "$TMP/body" >"$OUT/$srv-$r.tsv" 2>"$OUT/$srv-$r.err" || true
    sleep 0.3
    ostats=$(origin_stats)
    alive=1; kill -0 "$SPID" 2>/dev/null || alive=0
    row=$($PY - "$srv" "$r" "$OUT/$srv-$r.tsv" "$OUT/$srv-$r.err" "$CLIENTS" "$ostats" "$alive" "$LIMIT" <<'EOF'
import json, sys
from collections import Counter
srv, rnd, tsv, errf, n, ostats, alive, limit = sys.argv[1:]
n, limit = int(n), int(limit)
rows = [ln.rstrip("\n").split("\t") for ln in open(tsv) if ln.strip()]
times = sorted(float(r[4]) for r in rows if float(r[4]) >= 0)
statuses = Counter(r[0] for r in rows)
ok200 = sum(1 for r in rows if r[0] == "200" and r[3] == "1")
o = json.loads(ostats)
served = sum(v["served"] for v in o.values())
refused = sum(v["refused"] for v in o.values())
maxif = max(v["max_in_flight"] for v in o.values())
def pct(q):
    if not times:
        return None
    # answers that never came count as the slowest
    allt = times + [float("inf")] * (n - len(times))
    return allt[min(len(allt) - 1, int(q * len(allt)))]
why = []
if alive != "1": why.append("server died")
if len(rows) != n: why.append(f"{len(rows)} of {n} clients reported")
if len(times) != n: why.append(f"{n - len(times)} clients got no answer")
# with admission control the origins must never refuse and every client gets its answer
if srv.endswith("_queue") and (refused or ok200 != n):
    why.append(f"admission control let {refused} requests be refused by the origins, {ok200} of {n} clients got 200")
row = dict(server=srv, round=int(rnd), clients=n, ok_200=ok200,
           statuses=dict(statuses), origin_served=served, origin_refused=refused,
           origin_error_rate=refused / (served + refused) if served + refused else 0.0,
           origin_max_in_flight=maxif, limit=limit,
           p50_s=pct(0.50), p99_s=pct(0.99), max_s=times[-1] if times else None,
           ok=not why, why="; ".join(why))
print(json.dumps(row))
EOF
)
    echo "$row" >>"$RES"
    $PY -c 'import json,sys; r=json.loads(sys.argv[1]); print("%s round %d: %d/%d clients 200 (statuses %s); origins served %d refused %d (%.1f%% errors), max in flight %d; client p50 %.3fs p99 %.3fs %s" % (r["server"], r["round"], r["ok_200"], r["clients"], r["statuses"], r["origin_served"], r["origin_refused"], 100 * r["origin_error_rate"], r["origin_max_in_flight"], r["p50_s"] or -1, r["p99_s"] or -1, "" if r["ok"] else "FAILED: " + r["why"]))' "$row" >&2
    [ "$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$row")" = True ] || FAILED=1
    kill -0 "$SPID" 2>/dev/null || { log "$srv died"; break; }
  done
  stop_group "$SPID"
done

$PY - "$RES" "$CLIENTS" "$ORIGINS" "$LIMIT" "$DELAY" <<'EOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
clients, origins, limit, delay = sys.argv[2:]
print(f"{clients} clients at once, GET of an uncacheable URL; {origins} origins, each answering in "
      f"{delay} s and refusing (503) beyond {limit} requests in flight.\n")
print("| server | round | origin requests | origin 503s | origin error rate | max in flight at an origin "
      "| clients 200 | client 503 | client p50 s | client p99 s | notes |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
f = lambda x: "-" if x is None else ("∞" if x == float("inf") else f"{x:.3f}")
for r in rows:
    other = {k: v for k, v in r["statuses"].items() if k not in ("200", "503")}
    notes = []
    if other: notes.append("other statuses " + ", ".join(f"{k}: {v}" for k, v in sorted(other.items())))
    if r["why"]: notes.append("FAILED: " + r["why"])
    print(f"| {r['server']} | {r['round']} | {r['origin_served'] + r['origin_refused']:,} | {r['origin_refused']:,} "
          f"| {100 * r['origin_error_rate']:.1f}% | {r['origin_max_in_flight']} | {r['ok_200']:,} "
          f"| {r['statuses'].get('503', 0):,} | {f(r['p50_s'])} | {f(r['p99_s'])} | {'; '.join(notes)} |")
EOF
log "results: $OUT"
exit "$FAILED"
