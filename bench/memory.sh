#!/usr/bin/env bash
# bench/memory.sh: memory per cached object, moat vs Varnish.
#
#   bash bench/memory.sh            # COUNTS="10000 100000" SERVERS="moat varnish"
#
# For each server and each COUNT, a fresh server (one worker / one thread pool, 2 GiB of cache
# memory) is started, one request goes through each of the fill's 64 connections (paths
# outside /obj/, so per-connection buffers and workspaces are in the baseline); then
#   1. VmRSS of its processes (summed over the process tree) is read: "before";
#   2. pass 1 GETs COUNT distinct URLs /obj/0../obj/COUNT-1 (1 KiB each, the origin answers
#      any path with the same 1 KiB and Cache-Control: public, max-age=3600): every request must
#      reach the origin (its stub_status counter grows by COUNT);
#   3. pass 2 GETs the same COUNT URLs again: the origin's counter must not grow and every
#      response must say it was a hit (moat: Cache-Status: moat; hit; Varnish: X-Varnish with
#      two ids);
#   4. VmRSS again: "after". (after - before) / COUNT is the RSS per cached object.
# For moat, the admin API's moat_cache_objects / moat_cache_bytes (its own accounting) are
# reported too. Servers on SERVER_CPU (0), origin and client on CLIENT_CPU (1).
# Output: a markdown table on stdout and bench/out/memory-<stamp>/{table.md,results.jsonl,...}.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3
COUNTS=${COUNTS:-"10000 100000"}
SERVERS=${SERVERS:-"moat varnish"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
FILL_CONNS=${FILL_CONNS:-64}
MOAT=${MOAT:-$ROOT/moat}

BENCH=memory
# shellcheck source=bench/lib/common.sh
. "$HERE/lib/common.sh"
bench_setup memory

# VmRSS in KiB, summed over PID and all its descendants
rss_kib() {
  $PY - "$1" <<'EOF'
import os, sys
root = int(sys.argv[1]); parent = {}
for n in os.listdir("/proc"):
    if n.isdigit():
        try:
            d = open(f"/proc/{n}/stat").read(); parent[int(n)] = int(d[d.rindex(")") + 2:].split()[1])
        except OSError:
            pass
tree = {root}; grew = True
while grew:
    grew = False
    for p, pp in parent.items():
        if pp in tree and p not in tree: tree.add(p); grew = True
tot = 0
for p in tree:
    try:
        for ln in open(f"/proc/{p}/status"):
            if ln.startswith("VmRSS:"): tot += int(ln.split()[1])
    except OSError:
        pass
print(tot)
EOF
}

# ---- origin: nginx, any path -> the same 1 KiB from memory, cacheable for an hour ----------
BODY=$($PY -c '
alpha = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
print("".join(alpha[(i * 7 + i // 61) % len(alpha)] for i in range(1023)), end="")')
start_origin "$BODY"

start_server() {  # NAME DIR: sets SPID SPORT [APORT]
  local name=$1 dir=$2
  SPORT=$(free_port); mkdir -p "$dir"
  case "$name" in
    moat)
      start_moat "$dir" 2GiB ;;
    varnish)
      start "$dir/varnishd.log" "$SERVER_CPU" varnishd -F -n "$dir/work" -T none \
        -a "127.0.0.1:$SPORT" -b "127.0.0.1:$OPORT" -s malloc,2g \
        -p thread_pools=1 -p thread_pool_min=100 -p thread_pool_max=1000 ;;
    *) die "unknown server $name" ;;
  esac
  SPID=$LASTPID
  wait_port "$SPID" "$SPORT" || { tail -n 20 "$dir"/*.log >&2; die "$name did not start"; }
}

fill() { taskset -c "$CLIENT_CPU" $PY "$HERE/lib/fill.py" "$SPORT" "${2:-/obj/}" "$1" "$FILL_CONNS"; }

RES="$OUT/results.jsonl"; : >"$RES"
FAILED=0
for srv in $SERVERS; do
  for n in $COUNTS; do
    dir="$TMP/$srv-$n"
    start_server "$srv" "$dir"
    # One request on each of the fill's FILL_CONNS connections before the baseline (paths
    # outside /obj/), so that what the server sets up per connection or thread (buffers,
    # workspaces) is in "before" and does not count as memory per cached object.
    fill "$FILL_CONNS" /warm/ >/dev/null
    sleep 1
    rss0=$(rss_kib "$SPID")
    o0=$(origin_reqs)
    p1=$(fill "$n")
    o1=$(origin_reqs)
    p2=$(fill "$n")
    o2=$(origin_reqs)
    sleep 1
    rss1=$(rss_kib "$SPID")
    objs=""; cbytes=""
    if [ "$srv" = moat ]; then objs=$(moat_metric moat_cache_objects); cbytes=$(moat_metric moat_cache_bytes); fi
    alive=1; kill -0 "$SPID" 2>/dev/null || alive=0
    row=$($PY - "$srv" "$n" "$rss0" "$rss1" "$((o1 - o0 - 1))" "$((o2 - o1 - 1))" "$p1" "$p2" "${objs:-}" "${cbytes:-}" "$alive" <<'EOF'
import json, sys
srv, n, rss0, rss1, o1, o2, p1, p2, objs, cbytes, alive = sys.argv[1:]
n, rss0, rss1, o1, o2 = int(n), int(rss0), int(rss1), int(o1), int(o2)
p1, p2 = json.loads(p1), json.loads(p2)
why = []
if alive != "1": why.append("server died")
if p1["ok"] != n: why.append(f"pass 1: {p1['ok']} of {n} ok ({p1})")
if o1 != n: why.append(f"pass 1: origin saw {o1} requests, expected {n}")
if p2["ok"] != n: why.append(f"pass 2: {p2['ok']} of {n} ok ({p2})")
if o2 != 0: why.append(f"pass 2: origin saw {o2} requests, expected 0 (not cached)")
if p2["hits"] != n: why.append(f"pass 2: {p2['hits']} of {n} responses marked as hits")
row = dict(server=srv, objects=n, rss_before_kib=rss0, rss_after_kib=rss1,
           delta_bytes_per_object=(rss1 - rss0) * 1024 / n,
           origin_pass1=o1, origin_pass2=o2, pass1=p1, pass2=p2,
           cache_objects_metric=int(float(objs)) if objs else None,
           cache_bytes_metric=int(float(cbytes)) if cbytes else None, ok=not why, why="; ".join(why))
print(json.dumps(row))
EOF
)
    echo "$row" >>"$RES"
    $PY -c 'import json,sys; r=json.loads(sys.argv[1]); print("%s %d objects: RSS %d -> %d KiB, %.0f B/object; pass1 %.1fs, pass2 %.1fs, origin %d/%d, hits %d %s" % (r["server"], r["objects"], r["rss_before_kib"], r["rss_after_kib"], r["delta_bytes_per_object"], r["pass1"]["elapsed_s"], r["pass2"]["elapsed_s"], r["origin_pass1"], r["origin_pass2"], r["pass2"]["hits"], "" if r["ok"] else "FAILED: " + r["why"]))' "$row" >&2
    [ "$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$row")" = True ] || FAILED=1
    stop_group "$SPID"
  done
done

$PY - "$RES" <<'EOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| server | objects | RSS before MiB | RSS after MiB | RSS delta per object | cache's own accounting per object | origin reqs pass 1 / pass 2 | pass 2 hits | fill time pass 1 / 2 | ok |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
for r in rows:
    acc = "-"
    if r["cache_bytes_metric"] and r["cache_objects_metric"]:
        acc = f"{r['cache_bytes_metric'] / r['cache_objects_metric']:,.0f} B ({r['cache_objects_metric']:,} objects)"
    print(f"| {r['server']} | {r['objects']:,} | {r['rss_before_kib']/1024:,.1f} | {r['rss_after_kib']/1024:,.1f} "
          f"| {r['delta_bytes_per_object']:,.0f} B ({r['delta_bytes_per_object']/1000:.2f} KB) | {acc} "
          f"| {r['origin_pass1']:,} / {r['origin_pass2']:,} | {r['pass2']['hits']:,} "
          f"| {r['pass1']['elapsed_s']:.1f} s / {r['pass2']['elapsed_s']:.1f} s | {'yes' if r['ok'] else 'NO: ' + r['why']} |")
EOF
log "results: $OUT"
exit "$FAILED"
