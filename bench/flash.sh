#!/usr/bin/env bash
# bench/flash.sh: flash crowd on one cold URL, moat vs Varnish vs nginx proxy_cache vs HAProxy.
#
#   bash bench/flash.sh     # ROUNDS=3 CLIENTS=1000 DELAY=1 SERVERS="floor moat varnish nginx_cache haproxy_cache"
#
# The origin (bench/lib/flash_origin.py, asyncio, on CLIENT_CPU) sleeps DELAY (1 s) before
# answering 64 KiB with Cache-Control: public, max-age=60 and counts the requests it gets per
# path. The client (bench/lib/flash_client.c, epoll, built here with cc; on CLIENT_CPU) opens
# CLIENTS connections to the server under test (on SERVER_CPU, one worker/thread), then sends
# GET /flash/<server>/<round> (a URL nobody asked for before) on all of them at once and reads
# every response. Reported per
# run: the origin's request count for that URL, the time until the first and the last client
# had its full body, and whether all responses were 200 with a body byte-identical to the
# origin's (hence all identical and complete).
# `floor` is nginx serving the same 64 KiB from tmpfs with no origin and no delay: the time the
# client and the loopback need to move CLIENTS x 64 KiB with no wait at all; not a contestant.
# Output: a markdown table on stdout and in bench/out/flash-<stamp>/.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-1000}
DELAY=${DELAY:-1}
SERVERS=${SERVERS:-"floor moat varnish nginx_cache haproxy_cache"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
MOAT=${MOAT:-$ROOT/moat}
SIZE=65536

BENCH=flash
# shellcheck source=bench/lib/common.sh
. "$HERE/lib/common.sh"

# every server and the client get a generous descriptor limit (1,000 clients + upstreams)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_setup flash
# shellcheck disable=SC2317 # called by bench_cleanup
bench_on_exit() { rm -rf "/dev/shm/moat-flash.$$"; }

OPORT=$(free_port)
start "$TMP/origin.log" "$CLIENT_CPU" $PY "$HERE/lib/flash_origin.py" "$OPORT" "$DELAY" "$SIZE"
OPID=$LASTPID
wait_port "$OPID" "$OPORT" || die "origin did not start"
origin_count() {  # PATH
  curl -s --max-time 3 "http://127.0.0.1:$OPORT/__count" | $PY -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], 0))' "$1"
}
# the origin's body, for the identity check, and a tmpfs copy for the floor server
SHM="/dev/shm/moat-flash.$$"; mkdir -p "$SHM/flash/floor"; chmod -R 755 "$SHM"
$PY - "$SIZE" "$SHM/body" <<'EOF'
import sys
alpha = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
n = int(sys.argv[1])
open(sys.argv[2], "wb").write(bytes(alpha[(i * 7 + i // 61) % len(alpha)] for i in range(n - 1)) + b"\n")
EOF
cc -O2 -o "$TMP/flash_client" "$HERE/lib/flash_client.c" || die "cannot build bench/lib/flash_client.c"
for r in $(seq 1 "$ROUNDS"); do cp "$SHM/body" "$SHM/flash/floor/$r"; done
chmod -R a+rX "$SHM"

# an nginx server on SERVER_CPU (bench/lib/nginx.sh), with file descriptors for 1,000 clients
# and their origin connections
serve_nginx() {   # DIR PORT LOCATION [HTTP_EXTRA]
  local dir=$1
  nginx_conf "$dir" "$2" "$3" "${4:-}" "worker_rlimit_nofile 20000;"
  nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" || die "nginx config invalid: $dir/nginx.conf"
  start "$dir/stdout.log" "$SERVER_CPU" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
}

start_server() {  # NAME: sets SPID SPORT
  local name=$1 dir="$TMP/$1"
  SPORT=$(free_port); mkdir -p "$dir"
  case "$name" in
    floor)
      serve_nginx "$dir" "$SPORT" "location / { root $SHM; }" ;;
    moat)
      start "$dir/moat.log" "$SERVER_CPU" "$MOAT" --origin "http://127.0.0.1:$OPORT" \
        --listen "127.0.0.1:$SPORT" --workers 1 ;;
    varnish)
      # a thread per connection: the pool may grow to 2,000 threads so 1,000 clients fit
      start "$dir/varnishd.log" "$SERVER_CPU" varnishd -F -n "$dir/work" -T none \
        -a "127.0.0.1:$SPORT" -b "127.0.0.1:$OPORT" -s malloc,256m \
        -p thread_pools=1 -p thread_pool_min=100 -p thread_pool_max=2000 ;;
    nginx_cache)
      serve_nginx "$dir" "$SPORT" "
        location / {
            proxy_pass http://127.0.0.1:$OPORT;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffer_size 16k;
            proxy_buffers 8 32k;
            proxy_cache flash;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_lock_age 10s;
        }" "proxy_cache_path $dir/cache levels=1:2 keys_zone=flash:10m max_size=256m inactive=1h use_temp_path=off;" ;;
    haproxy_cache)
      cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$SPORT
    default_backend be

backend be
    http-reuse always
    http-request cache-use flash
    http-response cache-store flash
    server origin 127.0.0.1:$OPORT maxconn 4000

cache flash
    total-max-size 256
    max-object-size 262144
    max-age 3600
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
    path="/flash/$srv/$r"
    o0=$(origin_count "$path")
    taskset -c "$CLIENT_CPU" "$TMP/flash_client" "$SPORT" "$path" "$CLIENTS" "$SHM/body" >"$OUT/$srv-$r.tsv" 2>"$OUT/$srv-$r.err" || true
    out=$($PY "$HERE/lib/flash_summary.py" "$OUT/$srv-$r.tsv" "$CLIENTS" "$OUT/$srv-$r.err")
    sleep 0.3
    o1=$(origin_count "$path")
    alive=1; kill -0 "$SPID" 2>/dev/null || alive=0
    row=$($PY - "$srv" "$r" "$out" "$((o1 - o0))" "$alive" "$DELAY" <<'EOF'
import json, sys
srv, rnd, out, oreq, alive, delay = sys.argv[1:]
c = json.loads(out)
why = []
if alive != "1": why.append("server died")
if c["complete_200"] != c["clients"]:
    why.append(f"{c['complete_200']} of {c['clients']} complete 200 responses with the origin's body "
               f"(statuses {dict(c['statuses'])}, body sizes {dict(c['sizes'])})")
if c["errors"]: why.append(f"client errors {dict(c['errors'])}")
row = dict(server=srv, round=int(rnd), origin_requests=int(oreq), delay_s=float(delay), **c,
           identical_complete=c["complete_200"] == c["clients"],
           ok=not why, why="; ".join(why))
print(json.dumps(row))
EOF
)
    echo "$row" >>"$RES"
    $PY -c 'import json,sys; r=json.loads(sys.argv[1]); print("%s round %d: origin %d requests, first %.3fs median %.3fs last %.3fs, %d/%d complete 200, %d same body as origin, cache-status %s %s" % (r["server"], r["round"], r["origin_requests"], r["first_s"] or -1, r["median_s"] or -1, r["last_s"] or -1, r["complete_200"], r["clients"], r["same_as_origin"], r["cache_status"], "" if r["ok"] else "FAILED: " + r["why"]))' "$row" >&2
    [ "$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$row")" = True ] || FAILED=1
    kill -0 "$SPID" 2>/dev/null || { log "$srv died"; break; }
  done
  stop_group "$SPID"
done

$PY - "$RES" <<'EOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| server | round | origin requests | first body s | median s | last body s | all 200, complete, identical | notes |")
print("|---|--:|--:|--:|--:|--:|---|---|")
for r in rows:
    f = lambda x: "-" if x is None else f"{x:.3f}"
    notes = []
    cs = {k: v for k, v in r["cache_status"].items() if k != "-"}
    if cs: notes.append("Cache-Status: " + ", ".join(f"{v}× `{k}`" for k, v in sorted(cs.items(), key=lambda kv: -kv[1])))
    if r["why"]: notes.append(r["why"])
    print(f"| {r['server']} | {r['round']} | {r['origin_requests']:,} | {f(r['first_s'])} | {f(r['median_s'])} | {f(r['last_s'])} "
          f"| {'yes' if r['identical_complete'] else 'NO'} ({r['complete_200']}/{r['clients']}) | {'; '.join(notes)} |")
EOF
log "results: $OUT"
exit "$FAILED"
