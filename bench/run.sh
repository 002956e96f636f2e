#!/usr/bin/env bash
# bench/run.sh: moat side by side with nginx, HAProxy and Varnish (proxy, cache-hit, TLS and
# load-balancing sets).
#
#   bash bench/run.sh [SET...] [--write-results]
#
# SET is a scenario set (proxy, cache, tls, lb, h2; default: proxy, cache, tls, lb).
# --write-results (or WRITE_RESULTS=1 in the environment, e.g. `make bench WRITE_RESULTS=1`) rewrites
# bench/RESULTS.md from this run. Raw runs and the tables always go to bench/out/<stamp>/.
#
# Environment knobs (defaults in brackets):
#   ROUNDS [6]  DURATION [4s]  WARMUP [1s]  CONNS [50]
#   SERVER_CPU [0]  CLIENT_CPU [1]     cores for servers under test / for wrk + origin
#   SERVERS ["" = every server of the set]  e.g. SERVERS="limit moat"
#   MOAT [./moat]  MOAT_EXTRA_ARGS [""] (every moat)  MOAT_CACHE_ARGS [""] (moat_cache only)
#   MOAT_B [""]  a second moat binary: the proxy set also measures it as "moat_b", the cache
#                set as "moat_b_cache" (an A/B of
#                two builds in the same rounds; RESULTS.md is not written from such a run)
#   WORKLOADS ["" = every workload of the set]  e.g. WORKLOADS="1k-keepalive 128k-keepalive"
#   TLS_CONNS [32]  concurrent connections of bench/lib/tls_load.c (the tls set's handshake rows)
#   H2_CONNS [10]  H2_STREAMS [100]  h2load's connections and streams per connection (h2 set)
#
# Layout: every server under test has a start_<name> function (writes its config into the run's
# temp dir, starts it pinned to SERVER_CPU, sets PORT[name] and ROOTPID[name]). A scenario set
# is a set_<name> function that fills SET_SERVERS and SET_WORKLOADS. Adding a set = one
# set_<name> function + start_<server> functions for servers it introduces.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=/usr/bin/python3

ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-4s}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SERVERS=${SERVERS:-}
MOAT=${MOAT:-$ROOT/moat}
MOAT_EXTRA_ARGS=${MOAT_EXTRA_ARGS:-}
MOAT_B=${MOAT_B:-}
WORKLOADS=${WORKLOADS:-}
WRITE_RESULTS=${WRITE_RESULTS:-0}

TLS_CONNS=${TLS_CONNS:-32}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-100}

ALL_SETS=(proxy cache tls lb)

knobs=""
for v in ROUNDS DURATION WARMUP CONNS TLS_CONNS SERVERS SERVER_CPU CLIENT_CPU MOAT_EXTRA_ARGS MOAT_CACHE_ARGS MOAT_B WORKLOADS WRITE_RESULTS; do
  if printenv "$v" >/dev/null 2>&1; then knobs+="$v=${!v} "; fi
done
if [ -n "${MAKELEVEL:-}" ]; then
  ORIG_CMD="make bench${knobs:+ ${knobs% }}"
else
  ORIG_CMD="${knobs}bash bench/run.sh${*:+ $*}"
fi

sets=()
for a in "$@"; do
  case "$a" in
    --write-results) WRITE_RESULTS=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    all) sets+=("${ALL_SETS[@]}") ;;
    -*) echo "run.sh: unknown option '$a'" >&2; exit 2 ;;
    *) sets+=("$a") ;;   # validated once the set_* functions are defined
  esac
done
[ "${#sets[@]}" -gt 0 ] || sets=("${ALL_SETS[@]}")

log()  { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
loud() {
  printf '\n' >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  printf '!!! %s\n' "$@" >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}
die()  { loud "$@"; exit 1; }

for tool in wrk nginx haproxy taskset curl timeout cc openssl; do
  command -v "$tool" >/dev/null || die "missing $tool: run scripts/install-deps"
done
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 cores; server and client will share a core"

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: everything is started with setsid (own process group, pgid = pid) and
# killed by that group id on exit. Nothing else is touched.
STARTED=()
TMP=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${STARTED[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + 5))
  for pid in "${STARTED[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "$TMP" ]; then
    # keep every server's config and logs next to the raw runs
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
      for d in "$TMP"/*/; do
        n=$(basename "$d"); [ "$n" = www ] && continue
        mkdir -p "$OUT/servers/$n"
        find "$d" -maxdepth 1 -type f \( -name '*.log' -o -name '*.conf' -o -name '*.cfg' \) \
          -exec cp {} "$OUT/servers/$n/" \; 2>/dev/null || true
      done
    fi
    rm -rf "$TMP" "/dev/shm/moat-bench.$$"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TMP=$(mktemp -d /tmp/moat-bench.XXXXXX)
chmod 755 "$TMP"   # nginx workers run as nobody
STAMP=$(date +%Y%m%d-%H%M%S)
OUT="$HERE/out/$STAMP"
mkdir -p "$OUT"
RAW="$OUT/runs.jsonl"
: >"$RAW"

# A free TCP port on 127.0.0.1, below the ephemeral range so wrk's and the proxies' client
# sockets can never collide with it.
USED_PORTS=" "
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    [[ "$USED_PORTS" == *" $p "* ]] && continue
    if $PY -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null \
       && ! ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null | grep -q .; then
      USED_PORTS+="$p "
      echo "$p"; return 0
    fi
  done
  die "no free port found"
}

# start NAME CPU LOGFILE CMD...: start CMD in its own session pinned to CPU; sets LASTPID.
start() {
  local name=$1 cpu=$2 logf=$3; shift 3
  setsid taskset -c "$cpu" "$@" >"$logf" 2>&1 </dev/null &
  LASTPID=$!
  STARTED+=("$LASTPID")
  LOGF[$name]=$logf
  log "started $name (pid $LASTPID, cpu $cpu): $*"
}

wait_port() {   # NAME PID PORT: wait up to 10s for a listener
  local name=$1 pid=$2 port=$3
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# Bodies: deterministic printable bytes (safe inside an nginx quoted string), 1 KiB and 128 KiB.
WWW="$TMP/www"
SHM="/dev/shm/moat-bench.$$"
mkdir -p "$WWW" "$SHM"
chmod 755 "$WWW" "$SHM"
$PY - "$WWW" <<'EOF'
import sys
alpha = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
def body(n):
    return bytes(alpha[(i * 7 + i // 61) % len(alpha)] for i in range(n - 1)) + b"\n"
for name, n in (("1k", 1024), ("128k", 131072)):
    open(f"{sys.argv[1]}/{name}", "wb").write(body(n))
EOF
cp "$WWW/128k" "$SHM/128k"
chmod 644 "$WWW"/* "$SHM"/*
BODY_1K=$(head -c 1023 "$WWW/1k")   # nginx `return` adds nothing; we append the \n below
declare -A SIZE=([/1k]=1024 [/128k]=131072)
declare -A SHA=([/1k]=$(sha256sum <"$WWW/1k" | cut -d' ' -f1) [/128k]=$(sha256sum <"$WWW/128k" | cut -d' ' -f1))

declare -A PORT ROOTPID LOGF SCHEME
SKIPPED=()     # servers skipped (not available), with reason
FAILED=()      # servers that failed their check or a run

# nginx_conf (bench/lib/nginx.sh) plus what every nginx of this script has: tcp_nopush, and
# an explicit client keep-alive timeout.
# shellcheck source=bench/lib/nginx.sh
. "$HERE/lib/nginx.sh"
run_nginx_conf() {   # DIR PORT SERVER_BODY [HTTP_EXTRA] [LISTEN_EXTRA]
  nginx_conf "$1" "$2" "$3" "tcp_nopush on;
    keepalive_timeout 65s;
    ${4:-}" "" "${5:-}"
}

run_nginx() {    # NAME CPU DIR
  local name=$1 cpu=$2 dir=$3
  nginx -t -q -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/test.log" 2>&1 \
    || { cat "$dir/test.log" >&2; die "$name: nginx config invalid ($dir/nginx.conf)"; }
  start "$name" "$cpu" "$dir/stdout.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
}

# ---- the origin: nginx, one worker, static files, keep-alive; on the client core -----------
# ORIGINS lists the origin processes started so far: `origin`, plus origin2..origin4 once the
# lb set has started them (the same nginx, 4 processes on 4 ports, all on the client core).
# The origin request counter and the origin CPU of a run sum over all of them.
ORIGINS=()
start_origin_as() {   # NAME
  local name=$1 port; port=$(free_port)
  run_nginx_conf "$TMP/$name" "$port" "
        location / {
            root $WWW;
            open_file_cache max=64 inactive=60s;
            add_header Cache-Control \"public, max-age=3600\";
        }
        location = /__origin_status { stub_status; }"
  run_nginx "$name" "$CLIENT_CPU" "$TMP/$name"
  wait_port "$name" "$LASTPID" "$port" || { tail -n 20 "$TMP/$name/error.log" "$TMP/$name/stdout.log" >&2; die "origin nginx $name did not start"; }
  PORT[$name]=$port; ROOTPID[$name]=$LASTPID
  ORIGINS+=("$name")
}
start_origin() { start_origin_as origin; }

# ---- servers under test ----------------------------------------------------------------------
# limit: the fastest path nginx has: 1 KiB via `return` (body in the config, from memory);
# 128 KiB is too long for an nginx config token, so it is a file on tmpfs (/dev/shm) with
# open_file_cache and sendfile: no disk, no per-request open().
start_limit() {
  local port; port=$(free_port)
  run_nginx_conf "$TMP/limit" "$port" "
        location = /1k { return 200 \"${BODY_1K}\n\"; }
        location = /128k {
            root $SHM;
            open_file_cache max=64 inactive=60s;
            open_file_cache_valid 3600s;
        }"
  run_nginx limit "$SERVER_CPU" "$TMP/limit"
  PORT[limit]=$port; ROOTPID[limit]=$LASTPID
}

# nginx: proxy_pass with upstream keep-alive. proxy_buffers hold a whole 128 KiB response in
# memory (the defaults, 8 x 4k, would spill it to a temp file on disk on every request).
nginx_proxy() {   # NAME [LOCATION_EXTRA] [HTTP_EXTRA]
  nginx_proxy_upstream "$1" "${2:-}" "${3:-}" "        server 127.0.0.1:${PORT[origin]};"
}
nginx_proxy_upstream() {   # NAME LOCATION_EXTRA HTTP_EXTRA UPSTREAM_SERVERS [KEEPALIVE]
  local name=$1 port; port=$(free_port)
  run_nginx_conf "$TMP/$name" "$port" "
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffer_size 16k;
            proxy_buffers 8 32k;
            proxy_max_temp_file_size 0;
            ${2:-}
        }" "
    upstream origin {
$4
        keepalive ${5:-32};
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }
    ${3:-}"
  run_nginx "$name" "$SERVER_CPU" "$TMP/$name"
  PORT[$name]=$port; ROOTPID[$name]=$LASTPID
}
start_nginx() { nginx_proxy nginx; }

# nginx_cache: the same plus proxy_cache (nginx keeps cached bodies in files: page cache).
start_nginx_cache() {
  nginx_proxy nginx_cache "proxy_cache bench; proxy_cache_valid 200 1h;" \
    "proxy_cache_path $TMP/nginx_cache/cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=1h use_temp_path=off;"
}

# The global and defaults sections every HAProxy of the bench shares: one thread, mode http,
# no logging, keep-alive, the same timeouts.
haproxy_head() {   # DIR
  local dir=$1
  cat <<EOF
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
EOF
}

# haproxy: one thread, mode http, no logging, server connections shared across clients
# (http-reuse always: the same thing nginx's keepalive pool and moat's pool do).
haproxy_proxy() {   # NAME [BACKEND_EXTRA] [TOP_EXTRA]
  haproxy_proxy_servers "$1" "${2:-}" "    server origin 127.0.0.1:${PORT[origin]}" "${3:-}"
}
haproxy_proxy_servers() {   # NAME BACKEND_EXTRA SERVER_LINES [TOP_EXTRA]
  local name=$1 port; port=$(free_port); local dir="$TMP/$name"
  mkdir -p "$dir"
  { haproxy_head "$dir"; cat <<EOF

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    http-reuse always
${2:-}
$3
${4:-}
EOF
  } >"$dir/haproxy.cfg"
  haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 \
    || { cat "$dir/check.log" >&2; die "$name: config invalid ($dir/haproxy.cfg)"; }
  start "$name" "$SERVER_CPU" "$dir/stdout.log" haproxy -db -f "$dir/haproxy.cfg"
  PORT[$name]=$port; ROOTPID[$name]=$LASTPID
}
start_haproxy() { haproxy_proxy haproxy; }

# haproxy_cache: the same plus HAProxy's small-object RAM cache, sized for 128 KiB objects.
start_haproxy_cache() {
  haproxy_proxy haproxy_cache "    http-request cache-use bench
    http-response cache-store bench" "
cache bench
    total-max-size 256
    max-object-size 262144
    max-age 3600"
}

# varnish: malloc storage, builtin VCL (-b), one thread pool. Varnish runs a thread per
# connection, so "one worker" is one pool on core 0; CPU is manager + child.
start_varnish() {
  local port; port=$(free_port); local dir="$TMP/varnish"
  mkdir -p "$dir"
  start varnish "$SERVER_CPU" "$dir/varnishd.log" varnishd -F -n "$dir/work" -T none \
    -a "127.0.0.1:$port" -b "127.0.0.1:${PORT[origin]}" -s malloc,256m \
    -p thread_pools=1 -p thread_pool_min=100 -p thread_pool_max=1000
  PORT[varnish]=$port; ROOTPID[varnish]=$LASTPID
}

# ---- the tls set's servers -------------------------------------------------------------------
# Certificates made at run time (openssl CLI) in the run's temp dir: ECDSA P-256 and RSA-2048,
# both for bench.test, self-signed (the clients do not verify: the cost measured is the
# server's). Every TLS server has both, and every one is pinned to the same suite: TLS 1.3
# only, TLS_AES_256_GCM_SHA384, X25519. tls_load offers exactly that; wrk offers what its
# OpenSSL has and gets the servers' only choice.
TLS_SUITE=TLS_AES_256_GCM_SHA384
TLS_GROUP=X25519
CERTS=""
make_certs() {
  [ -z "$CERTS" ] || return 0
  CERTS="$TMP/certs"; mkdir -p "$CERTS"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test -keyout "$CERTS/ec.key" -out "$CERTS/ec.pem" 2>"$CERTS/openssl.log" \
    && openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=bench.test \
      -addext subjectAltName=DNS:bench.test -keyout "$CERTS/rsa.key" -out "$CERTS/rsa.pem" 2>>"$CERTS/openssl.log" \
    || { cat "$CERTS/openssl.log" >&2; die "cannot make the bench certificates"; }
  # HAProxy wants certificate and key in one file
  cat "$CERTS/ec.pem" "$CERTS/ec.key" >"$CERTS/ec.crt"
  cat "$CERTS/rsa.pem" "$CERTS/rsa.key" >"$CERTS/rsa.crt"
  chmod 644 "$CERTS"/*   # nginx workers run as nobody (the keys are throwaway)
}
TLS_LOAD=""
build_tls_load() {
  [ -z "$TLS_LOAD" ] || return 0
  TLS_LOAD="$TMP/tls_load"
  cc -O2 -o "$TLS_LOAD" "$HERE/lib/tls_load.c" -lssl -lcrypto 2>"$TMP/tls_load.build.log" \
    || { cat "$TMP/tls_load.build.log" >&2; die "cannot build bench/lib/tls_load.c (libssl-dev?)"; }
}

# nginx_tls: nginx's fastest TLS answer: 1 KiB via `return 200` over TLS, both certificates,
# a shared session cache and tickets (nginx's defaults for tickets). nginx_h2 (the h2 set): the
# same with `listen ... ssl http2` (ALPN h2), and /128k as limit serves it: a file on tmpfs
# (/dev/shm) with open_file_cache (no disk, no per-request open(); over TLS nginx reads it into
# its buffers, sendfile does not apply).
start_nginx_tls_as() {   # NAME LISTEN_EXTRA [LOCATION_EXTRA]
  make_certs
  local port; port=$(free_port)
  run_nginx_conf "$TMP/$1" "$port" "
        ssl_certificate $CERTS/ec.pem;
        ssl_certificate_key $CERTS/ec.key;
        ssl_certificate $CERTS/rsa.pem;
        ssl_certificate_key $CERTS/rsa.key;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites $TLS_SUITE;
        ssl_ecdh_curve $TLS_GROUP;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        location = /1k { return 200 \"${BODY_1K}\n\"; }
        ${3:-}" "" "$2"
  run_nginx "$1" "$SERVER_CPU" "$TMP/$1"
  PORT[$1]=$port; ROOTPID[$1]=$LASTPID; SCHEME[$1]=https
}
start_nginx_tls() { start_nginx_tls_as nginx_tls ssl; }
start_nginx_h2() {
  start_nginx_tls_as nginx_h2 "ssl http2" "location = /128k {
            root $SHM;
            open_file_cache max=64 inactive=60s;
            open_file_cache_valid 3600s;
        }"
}

# haproxy_tls: one thread, the same certificates, suite and group; 1 KiB from
# `http-request return ... file` (read once at start, answered from memory: HAProxy's own
# "return 200"), its default session cache and tickets. haproxy_h2 (the h2 set): the same with
# ALPN h2,http/1.1, and /128k from HAProxy's own RAM cache in front of the origin (`http-request
# return` answers from one buffer, bufsize 16 KiB, so it cannot send 128 KiB; the cache stores
# objects across buffers): a backend as haproxy_cache's, filled by the check, so every measured
# /128k is a hit from memory.
start_haproxy_tls_as() {   # NAME ALPN [128K]
  make_certs
  local name=$1 port; port=$(free_port); local dir="$TMP/$1"
  mkdir -p "$dir"
  { haproxy_head "$dir"; cat <<EOF

frontend fe
    bind 127.0.0.1:$port ssl crt $CERTS/ec.crt crt $CERTS/rsa.crt ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3 ciphersuites $TLS_SUITE curves $TLS_GROUP alpn $2
    http-request return status 200 content-type application/octet-stream file $WWW/1k if { path /1k }
EOF
    if [ -n "${3:-}" ]; then cat <<EOF
    http-request return status 404 unless { path /128k }
    default_backend be

backend be
    http-reuse always
    http-request cache-use bench
    http-response cache-store bench
    server origin 127.0.0.1:${PORT[origin]}

cache bench
    total-max-size 256
    max-object-size 262144
    max-age 3600
EOF
    else echo "    http-request return status 404"; fi
  } >"$dir/haproxy.cfg"
  haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 \
    || { cat "$dir/check.log" >&2; die "$name: config invalid ($dir/haproxy.cfg)"; }
  start "$name" "$SERVER_CPU" "$dir/stdout.log" haproxy -db -f "$dir/haproxy.cfg"
  PORT[$name]=$port; ROOTPID[$name]=$LASTPID; SCHEME[$name]=https
}
start_haproxy_tls() { start_haproxy_tls_as haproxy_tls http/1.1; }
start_haproxy_h2() { start_haproxy_tls_as haproxy_h2 h2,http/1.1 128k; }

# moat_tls: one worker, a TLS listener from a config file (the TLS configuration of
# docs/configuration.md), the same certificates, suite and group; the origin's 1 KiB comes from
# moat's cache (the origin sends Cache-Control: public, max-age=3600; the check fills it), so
# every measured request is a cache hit over TLS. Skipped (loudly) while ./moat refuses the
# config (before TLS lands).
start_moat_tls() {
  moat_usable moat_tls || return 1
  make_certs
  local port; port=$(free_port); local dir="$TMP/moat_tls"
  mkdir -p "$dir"
  cat >"$dir/moat.yaml" <<EOF
listen:
  - { addr: "127.0.0.1:$port", tls: true }
workers: 1
tls:
  certificates:
    - { cert: $CERTS/ec.pem, key: $CERTS/ec.key }
    - { cert: $CERTS/rsa.pem, key: $CERTS/rsa.key }
  protocols: [tls1.3]
  ciphersuites: "$TLS_SUITE"
  groups: "$TLS_GROUP"
pools: { origin: { origins: ["127.0.0.1:${PORT[origin]}"] } }
sites: [{ hosts: ["*"], pool: origin }]
EOF
  if ! "$MOAT" -t -c "$dir/moat.yaml" >"$dir/check.log" 2>&1; then
    loud "moat_tls: '$MOAT -t' refuses the TLS config: $(head -n1 "$dir/check.log")" \
         "SKIPPING moat_tls (TLS not in this moat yet?). The peers are still measured."
    SKIPPED+=("moat_tls: $MOAT -t refused its config: $(head -n1 "$dir/check.log")")
    return 1
  fi
  # shellcheck disable=SC2086
  start moat_tls "$SERVER_CPU" "$dir/moat.log" "$MOAT" -c "$dir/moat.yaml" $MOAT_EXTRA_ARGS
  PORT[moat_tls]=$port; ROOTPID[moat_tls]=$LASTPID; SCHEME[moat_tls]=https
  # A build that parses the TLS keys but cannot serve TLS yet passes -t and then refuses to
  # start ("... which this build of moat cannot do yet"): a skip, not a failure.
  if ! wait_port moat_tls "$LASTPID" "$port" && grep -q "cannot do" "$dir/moat.log" 2>/dev/null; then
    loud "moat_tls: $(grep -m1 "cannot do" "$dir/moat.log")" "SKIPPING moat_tls. The peers are still measured."
    SKIPPED+=("moat_tls: this build cannot serve TLS yet")
    unset "PORT[moat_tls]"
    return 1
  fi
}

# moat: quick mode, one worker. Skipped (loudly) until ./moat exists and takes --origin.
moat_usable() {   # NAME [BINARY]
  local MOAT=${2:-$MOAT}
  if [ ! -x "$MOAT" ]; then
    loud "$1: $MOAT not built (make failed or not yet written): SKIPPING $1." \
         "Peers are still measured; the $1 rows will be missing."
    SKIPPED+=("$1: $MOAT not built")
    return 1
  fi
  if ! "$MOAT" --help 2>&1 | grep -q -- '--origin'; then
    loud "$1: '$MOAT --help' does not mention --origin (quick mode missing?): SKIPPING $1."
    SKIPPED+=("$1: no quick mode (--origin) in --help")
    return 1
  fi
}
moat_proxy() {   # NAME [EXTRA ARGS...]  (BIN: the binary, default $MOAT)
  local name=$1 port; shift; port=$(free_port); local dir="$TMP/$name"
  local MOAT=${BIN:-$MOAT}
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  start "$name" "$SERVER_CPU" "$dir/moat.log" "$MOAT" --origin "http://127.0.0.1:${PORT[origin]}" \
    --listen "127.0.0.1:$port" --workers 1 "$@" $MOAT_EXTRA_ARGS
  PORT[$name]=$port; ROOTPID[$name]=$LASTPID
}
# The proxy set's moat must forward every request (the origin sends a cacheable
# Cache-Control), so its cache is off.
start_moat() { moat_usable moat && moat_proxy moat --no-cache; }
start_moat_b() { moat_usable moat_b "$MOAT_B" && BIN=$MOAT_B moat_proxy moat_b --no-cache; }
# moat_nofwd: the same as moat from a config file, with `forward_headers: []`: moat then sends
# the origin only Via, as HAProxy and nginx here send nothing extra (equal work for the origin;
# not the verdict row, which is moat's default).
start_moat_nofwd() {
  moat_usable moat_nofwd || return 1
  local port; port=$(free_port); local dir="$TMP/moat_nofwd"
  mkdir -p "$dir"
  cat >"$dir/moat.yaml" <<EOF
listen: ["127.0.0.1:$port"]
workers: 1
forward_headers: []
cache: { enabled: false }
pools: { origin: { origins: ["127.0.0.1:${PORT[origin]}"], host_header: origin } }
sites: [{ hosts: ["*"], pool: origin }]
EOF
  "$MOAT" -t -c "$dir/moat.yaml" >"$dir/check.log" 2>&1 \
    || { cat "$dir/check.log" >&2; die "moat_nofwd: config invalid ($dir/moat.yaml)"; }
  # shellcheck disable=SC2086
  start moat_nofwd "$SERVER_CPU" "$dir/moat.log" "$MOAT" -c "$dir/moat.yaml" $MOAT_EXTRA_ARGS
  PORT[moat_nofwd]=$port; ROOTPID[moat_nofwd]=$LASTPID
}

# moat_cache: plain quick mode, which caches what the origin's headers allow (RFC 9111).
# MOAT_CACHE_ARGS: optional extra arguments for this server only.
start_moat_cache() {
  moat_usable moat_cache || return 1
  # shellcheck disable=SC2086
  moat_proxy moat_cache ${MOAT_CACHE_ARGS:-}
}
# moat_b_cache: MOAT_B in quick mode with its cache on, as moat_cache (an A/B of cache hits).
start_moat_b_cache() {
  moat_usable moat_b_cache "$MOAT_B" || return 1
  # shellcheck disable=SC2086
  BIN=$MOAT_B moat_proxy moat_b_cache ${MOAT_CACHE_ARGS:-}
}
# ---- the lb set's servers: a pool of 4 origins (origin, origin2..origin4) --------------------
# Every balancer round-robins over the same 4 origins with upstream keep-alive and checks
# their health the way it can: moat and HAProxy with an active HTTP check of each origin every
# second (GET /__origin_status, nginx's stub_status), nginx passively (max_fails; open-source
# nginx has no active checks). The checks reach the origins (a few per second in all), never
# the measured client.
LB_ORIGINS=(origin origin2 origin3 origin4)
lb_origins_up() {
  local o
  for o in "${LB_ORIGINS[@]}"; do [ -n "${PORT[$o]:-}" ] || start_origin_as "$o"; done
}
# moat_lb: one worker, a pool of the 4 origins (round_robin, the default) with an http monitor,
# cache off (every request is forwarded), everything else moat's defaults.
start_moat_lb() {
  moat_usable moat_lb || return 1
  local port; port=$(free_port); local dir="$TMP/moat_lb" o list=""
  mkdir -p "$dir"
  for o in "${LB_ORIGINS[@]}"; do list+="${list:+, }\"127.0.0.1:${PORT[$o]}\""; done
  cat >"$dir/moat.yaml" <<EOF
listen: ["127.0.0.1:$port"]
workers: 1
cache: { enabled: false }
monitors:
  web: { type: http, path: /__origin_status, interval: 1s, timeout: 1s, fall: 3, rise: 2 }
pools:
  o:
    origins: [$list]
    monitor: web
    balance: round_robin
sites: [{ hosts: ["*"], pool: o }]
EOF
  "$MOAT" -t -c "$dir/moat.yaml" >"$dir/check.log" 2>&1 \
    || { cat "$dir/check.log" >&2; die "moat_lb: config invalid ($dir/moat.yaml)"; }
  # shellcheck disable=SC2086
  start moat_lb "$SERVER_CPU" "$dir/moat.log" "$MOAT" -c "$dir/moat.yaml" $MOAT_EXTRA_ARGS
  PORT[moat_lb]=$port; ROOTPID[moat_lb]=$LASTPID
}
# haproxy_lb: one thread, balance roundrobin, option redispatch, retries 2, an HTTP check of
# each server every second (fall 3, rise 2), server connections shared (http-reuse always).
start_haproxy_lb() {
  local servers="" i=0 o
  for o in "${LB_ORIGINS[@]}"; do
    i=$((i + 1))
    servers+="    server o$i 127.0.0.1:${PORT[$o]} check inter 1s fall 3 rise 2
"
  done
  haproxy_proxy_servers haproxy_lb "    balance roundrobin
    option redispatch
    retries 2
    option httpchk GET /__origin_status" "$servers"
}
# nginx_lb: one worker, upstream with the 4 servers (round robin, nginx's default),
# max_fails=1 fail_timeout=10s, proxy_next_upstream error timeout. keepalive 128 idle upstream
# connections (over all 4 origins): with the proxy set's 32, the 50 clients spread over 4
# origins overflow nginx's idle cache and it opens a new origin connection for about every
# fourth request.
start_nginx_lb() {
  local ups="" o
  for o in "${LB_ORIGINS[@]}"; do ups+="        server 127.0.0.1:${PORT[$o]} max_fails=1 fail_timeout=10s;
"; done
  nginx_proxy_upstream nginx_lb "proxy_next_upstream error timeout;" "" "$ups" 128
}
# pass-through across a pool of 4 origins: requests per CPU-second of the balancer (issue 21;
# in the default sets, alone: `bash bench/run.sh lb`).
set_lb() {
  SET_SERVERS=(limit nginx_lb haproxy_lb moat_lb)
  SET_WORKLOADS=(lb-1k-keepalive:/1k:ka lb-1k-close:/1k:close)
  SET_EXPECT=forward
  lb_origins_up
}

# HTTP/2: 1 KiB and 128 KiB cache hits over TLS h2 (h2load, H2_CONNS connections x H2_STREAMS
# streams each, the issue's 10 x 100): moat (moat_tls, ALPN h2, from its cache) against nginx
# and HAProxy. 1 KiB: nginx `return`, HAProxy `http-request return` (from memory). 128 KiB:
# nginx a file on tmpfs with open_file_cache, HAProxy its RAM cache in front of the origin.
# limit is plain HTTP/1.1 (wrk keep-alive; `return 200` for 1 KiB, the tmpfs file for 128 KiB),
# the reference. Not in the default sets: `bash bench/run.sh h2`.
set_h2() {
  SET_SERVERS=(limit nginx_h2 haproxy_h2 moat_tls)
  SET_WORKLOADS=(h2-hit-1k:/1k:h2 h2-hit-128k:/128k:h2)
  SET_EXPECT=hit
  SET_TLS_PATHS="/1k /128k"
  command -v h2load >/dev/null || die "h2load missing (Debian nghttp2-client: scripts/install-deps)"
}


# ---------------------------------------------------------------------------------------------
# Scenario sets. A workload is NAME:PATH:MODE (MODE = ka | close).
# SET_EXPECT says what the origin's request counter must show during a run (limit is exempt):
# forward = every request reached the origin; hit = (almost) none did.
set_proxy() {
  SET_SERVERS=(limit nginx haproxy moat moat_nofwd)
  [ -z "$MOAT_B" ] || SET_SERVERS+=(moat_b)
  SET_WORKLOADS=(1k-keepalive:/1k:ka 1k-close:/1k:close 128k-keepalive:/128k:ka 128k-close:/128k:close)
  SET_EXPECT=forward
}
# Cache hits: the origin sends Cache-Control: public, max-age=3600; the check and the warm-up
# fill the caches.
set_cache() {
  SET_SERVERS=(limit moat_cache varnish nginx_cache haproxy_cache)
  [ -z "$MOAT_B" ] || SET_SERVERS+=(moat_b_cache)
  SET_WORKLOADS=(hit-1k-keepalive:/1k:ka hit-1k-close:/1k:close hit-128k-keepalive:/128k:ka hit-128k-close:/128k:close)
  SET_EXPECT=hit
}
# TLS: handshakes per CPU-second (bench/lib/tls_load.c, one `GET /1k` per connection: full
# ECDSA, full RSA, resumed) and 1 KiB over TLS keep-alive (wrk https://). The servers answer
# from memory (nginx `return`, HAProxy `http-request return`, moat a cache hit): the origin
# must see (almost) nothing. limit is plain HTTP: tls_load --plain (connect, GET, close) on the
# handshake rows, wrk keep-alive on the 1 KiB row.
set_tls() {
  SET_SERVERS=(limit nginx_tls haproxy_tls moat_tls)
  SET_WORKLOADS=(hs-full-ecdsa:/1k:full-ec hs-full-rsa:/1k:full-rsa hs-resumed:/1k:resumed tls-1k-keepalive:/1k:tlska)
  SET_EXPECT=hit
  SET_TLS_PATHS=/1k
  build_tls_load
}

# ---------------------------------------------------------------------------------------------
check_server() {  # NAME: status, size and bytes of every path, keep-alive and close
  local name=$1 port=${PORT[$1]} path hdr out code size sha scheme=${SCHEME[$1]:-http} paths="/1k /128k"
  [ "$scheme" = https ] && paths=${SET_TLS_PATHS:-/1k}   # the tls set's servers answer /1k only
  for path in $paths; do
    for hdr in "Connection: keep-alive" "Connection: close"; do
      out=$(timeout 10 curl -s -k --max-time 5 -H "$hdr" -o "$TMP/check.body" -w '%{http_code} %{size_download}' \
            "$scheme://127.0.0.1:$port$path" 2>&1) || true
      read -r code size <<<"$out"
      sha=$(sha256sum <"$TMP/check.body" 2>/dev/null | cut -d' ' -f1)
      if [ "$code" != 200 ] || [ "$size" != "${SIZE[$path]}" ] || [ "$sha" != "${SHA[$path]}" ]; then
        loud "$name: GET $path ($hdr) answered status=$code size=$size (want 200, ${SIZE[$path]} bytes, same body as the origin)." \
             "$name FAILS its check and is NOT measured."
        return 1
      fi
    done
  done
  log "$name: check ok (200, right sizes and bodies)"
}

alive() { local st; st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }

# bring_up NAME: start a server (again), wait for its port, check its answers.
bring_up() {
  local s=$1
  "start_$s" || return 1
  if ! wait_port "$s" "${ROOTPID[$s]}" "${PORT[$s]}"; then
    tail -n 20 "${LOGF[$s]}" "$TMP/$s/error.log" >&2 2>/dev/null || true
    loud "$s did not start listening on 127.0.0.1:${PORT[$s]} (its log is above): NOT measured"
    FAILED+=("$s: did not start"); unset "PORT[$s]"; return 1
  fi
  check_server "$s" || { FAILED+=("$s: failed its check"); return 1; }
}

# A server that died between runs (crash, or killed from outside on this shared machine) is
# restarted once per occurrence, loudly, and the run counts as failed.
ensure_alive() {
  local s=$1 pid=${ROOTPID[$1]}
  alive "$pid" && return 0
  tail -n 10 "${LOGF[$s]}" >&2 2>/dev/null || true
  loud "$s (pid $pid) is gone: crashed or killed from outside (its last log lines are above)." \
       "Restarting it; this is recorded as a failure."
  FAILED+=("$s: died (pid $pid), restarted before $2")
  mv -f "${LOGF[$s]}" "${LOGF[$s]%.log}.died-$pid.log" 2>/dev/null || true
  bring_up "$s"
}

cpu_ticks() { taskset -c "$CLIENT_CPU" $PY "$HERE/lib/cputicks.py" "$1"; }
# The origins' request counter (nginx stub_status; includes the status request itself), summed
# over every origin process.
origin_reqs() {   # the counters, one ACCEPTS:REQUESTS per origin, space-separated
  local o n out=""
  for o in "${ORIGINS[@]}"; do
    n=$(timeout 5 curl -s --max-time 3 "http://127.0.0.1:${PORT[$o]}/__origin_status" | awk 'NR == 3 { print $1 ":" $3 }')
    out+="${out:+ }${n:-0:0}"
  done
  echo "$out"
}
# per-origin requests between two origin_reqs readings (minus the status request itself)
origin_split() {   # BEFORE AFTER
  local -a a b; read -r -a a <<<"$1"; read -r -a b <<<"$2"
  local i out=""
  for i in "${!b[@]}"; do out+="${out:+ }$(( ${b[i]#*:} - ${a[i]#*:} - 1 ))"; done
  echo "$out"
}
# connections the origins accepted between two readings (minus the status requests' own)
origin_conns() {   # BEFORE AFTER
  local -a a b; read -r -a a <<<"$1"; read -r -a b <<<"$2"
  local i t=0
  for i in "${!b[@]}"; do t=$(( t + ${b[i]%%:*} - ${a[i]%%:*} - 1 )); done
  echo "$t"
}
origins_cpu_ticks() {
  local o n t=0
  for o in "${ORIGINS[@]}"; do n=$(cpu_ticks "${ROOTPID[$o]}") || n=0; t=$((t + n)); done
  echo "$t"
}

case "$DURATION" in
  *m) WRK_TIMEOUT=$(( ${DURATION%m} * 60 + 60 )) ;;
  *h) WRK_TIMEOUT=$(( ${DURATION%h} * 3600 + 60 )) ;;
  *)  WRK_TIMEOUT=$(( ${DURATION%%[a-z]*} + 60 )) ;;
esac

wrk_cmd() {   # PORT PATH MODE DURATION [SCHEME]
  local args=(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$4" --latency --timeout 5s -s "$HERE/lua/report.lua")
  [ "$3" = close ] && args+=(-H "Connection: close")
  args+=("${5:-http}://127.0.0.1:$1$2")
  timeout "$WRK_TIMEOUT" "${args[@]}"
}
seconds() { case "$1" in *ms) awk -v v="${1%ms}" 'BEGIN { print v / 1000 }' ;; *m) echo $(( ${1%m} * 60 )) ;; *s) echo "${1%s}" ;; *) echo "$1" ;; esac; }
# tls_load (bench/lib/tls_load.c) for the handshake rows; limit gets --plain, the reference.
tls_load_cmd() {   # SERVER PORT PATH MODE DURATION
  local args=(taskset -c "$CLIENT_CPU" "$TLS_LOAD" -p "$2" -P "$3" -c "$TLS_CONNS" -d "$(seconds "$5")" -s bench.test)
  if [ "$1" = limit ]; then
    args+=(--plain)
  else
    # The offer is a browser's, narrowed: TLS 1.3 with the pinned suite, TLS 1.2 with two
    # ECDHE AES-256-GCM ciphers, groups X25519 (its key share is the one sent) and P-256. The
    # servers accept only TLS 1.3 / the suite / X25519, and every run checks that this is what
    # was negotiated. Without the TLS 1.2 ciphers and P-256 in the offer, HAProxy 2.6 serves
    # its RSA certificate to a client that can do ECDSA (tls_load.c says why).
    args+=(--ciphersuites "$TLS_SUITE" --groups "$TLS_GROUP:P-256")
    case "$4" in
      full-rsa) args+=(--sigalgs rsa_pss_rsae_sha256:rsa_pkcs1_sha256) ;;
      resumed) args+=(--resume) ;;
    esac
  fi
  timeout "$WRK_TIMEOUT" "${args[@]}"
}
# h2load over TLS (ALPN h2) for the h2 set; its summary becomes the WRKJSON line measure()
# reads. h2load reports no percentiles: p50 is its mean time per request, p99 and max its max.
h2load_cmd() {   # PORT PATH DURATION
  local secs; secs=$(seconds "$3"); secs=${secs%.*}; [ "${secs:-0}" -ge 1 ] || secs=1
  local out
  out=$(timeout "$WRK_TIMEOUT" taskset -c "$CLIENT_CPU" h2load -t1 -c "$H2_CONNS" -m "$H2_STREAMS" \
        -D "$secs" "https://127.0.0.1:$1$2" 2>&1) || true
  printf '%s\n' "$out"
  $PY "$HERE/lib/h2load_json.py" "$out"
}
# load_cmd SERVER PORT PATH MODE DURATION: the client for the workload's MODE: ka, close: wrk
# over http; tlska: wrk keep-alive over the server's scheme (https, or http for limit);
# full-ec, full-rsa, resumed: tls_load (--plain for limit).
load_cmd() {
  case "$4" in
    full-ec|full-rsa|resumed) tls_load_cmd "$@" ;;
    tlska) wrk_cmd "$2" "$3" ka "$5" "${SCHEME[$1]:-http}" ;;
    h2) if [ "$1" = limit ]; then wrk_cmd "$2" "$3" ka "$5"; else h2load_cmd "$2" "$3" "$5"; fi ;;
    *) wrk_cmd "$2" "$3" "$4" "$5" ;;
  esac
}
# Busy clock ticks of one core (/proc/stat: everything but idle and iowait, softirq included).
core_busy() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

measure() {  # SET ROUND WORKLOAD PATH MODE SERVER
  local set=$1 round=$2 wl=$3 path=$4 mode=$5 srv=$6 port=${PORT[$6]} pid=${ROOTPID[$6]}
  load_cmd "$srv" "$port" "$path" "$mode" "$WARMUP" >/dev/null 2>&1 || true
  local t0 t1 o0 o1 out json expect=$SET_EXPECT
  [ "$srv" = limit ] && expect=none
  local q0 q1; q0=$(origins_cpu_ticks)
  o0=$(origin_reqs); t0=$(cpu_ticks "$pid") || { tail -n 5 "${LOGF[$srv]}" >&2; loud "$srv (pid $pid) is gone: exited or killed from outside; its last log lines are above"; return 1; }
  local c0 c1 s0 s1 w; c0=$(core_busy "$CLIENT_CPU"); s0=$(core_busy "$SERVER_CPU")
  # wrk's own CPU: the subshell's cutime+cstime once wrk (under timeout) has been reaped
  out=$( (load_cmd "$srv" "$port" "$path" "$mode" "$DURATION" 2>&1 || true
          awk '{ sub(/.*\) /, ""); print "WRKTICKS " $14 + $15 }' "/proc/$BASHPID/stat") )
  c1=$(core_busy "$CLIENT_CPU"); s1=$(core_busy "$SERVER_CPU")
  w=$(awk '/^WRKTICKS / { print $2 }' <<<"$out"); w=${w:-0}
  t1=$(cpu_ticks "$pid") || { tail -n 5 "${LOGF[$srv]}" >&2; loud "$srv (pid $pid) died during the run"; return 1; }; o1=$(origin_reqs)
  q1=$(origins_cpu_ticks)
  json=$(grep '^WRKJSON ' <<<"$out" | sed 's/^WRKJSON //' || true)
  [ -n "$json" ] || { echo "$out" >&2; json='{"requests":0,"duration_us":1,"bytes":0,"connect_errors":0,"read_errors":0,"write_errors":0,"status_errors":0,"timeouts":0,"p50_us":0,"p90_us":0,"p99_us":0,"max_us":0,"mean_us":0,"wrk_failed":1}'; }
  printf '%s\n' "$out" >>"$OUT/wrk.log"
  $PY - "$json" "$set" "$round" "$wl" "$path" "$mode" "$srv" "$((t1 - t0))" "$(getconf CLK_TCK)" "${SIZE[$path]}" "$(origin_split "$o0" "$o1")" "$expect" "$((q1 - q0))" "$((c1 - c0))" "$((s1 - s0))" "$w" "$AFTER" "$(origin_conns "$o0" "$o1")" >>"$RAW" <<'EOF'
import json, sys
w = json.loads(sys.argv[1])
set_, rnd, wl, path, mode, srv, ticks, hz, size, oreq, expect, oticks, cbusy, sbusy, wticks, after, oconns = sys.argv[2:]
split = [int(x) for x in oreq.split()]
ticks, hz, size, oreq, oticks = int(ticks), int(hz), int(size), sum(split), int(oticks)
cbusy, sbusy, wticks = int(cbusy), int(sbusy), int(wticks)
req = w["requests"]
dur = w["duration_us"] / 1e6
errs = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["status_errors"] + w["timeouts"]
why = []
if w.get("wrk_failed"): why.append("wrk produced no result")
if errs: why.append(f"{errs} errors (connect {w['connect_errors']}, read {w['read_errors']}, write {w['write_errors']}, non-2xx/3xx {w['status_errors']}, timeout {w['timeouts']})")
if req == 0: why.append("no requests completed")
elif w["bytes"] / req < size: why.append(f"{w['bytes']/req:.0f} bytes per response < body size {size}")
if expect == "forward" and oreq < 0.99 * req:
    why.append(f"only {oreq} of {req} requests reached the origin (answering without forwarding?)")
if expect == "hit" and oreq > max(10, 0.01 * req):
    why.append(f"{oreq} of {req} requests reached the origin (not cache hits)")
# a pool of several origins (the lb set): round robin must give each its share (within 5
# points of 1/N; the health checks add a few requests per second to each)
if set_ == "lb" and len(split) > 1 and srv != "limit" and oreq >= 1000:
    shares = [x / oreq for x in split]
    if max(abs(x - 1 / len(split)) for x in shares) > 0.05:
        why.append("origins' shares " + "/".join(f"{x:.0%}" for x in shares) + f", not 1/{len(split)} each")
# tls_load's own account of its handshakes: what was measured must be what the row says
tls = {}
if w.get("client") == "tls_load" and w.get("mode") != "plain":
    tls = {k: w.get(k) for k in ("handshakes", "full", "resumed", "protocol", "cipher", "group",
                                 "key_type", "key_bits")}
    if (w["protocol"], w["cipher"], w["group"].lower()) != ("TLSv1.3", "TLS_AES_256_GCM_SHA384", "x25519"):
        why.append(f"negotiated {w['protocol']} {w['cipher']} {w['group']}, not the pinned TLSv1.3 TLS_AES_256_GCM_SHA384 X25519")
    if mode in ("full-ec", "full-rsa") and w["resumed"]:
        why.append(f"{w['resumed']} of {w['handshakes']} handshakes were resumed, not full")
    if mode == "resumed" and w["full"]:
        why.append(f"{w['full']} of {w['handshakes']} handshakes were full, not resumed")
    want_key = "RSA" if mode == "full-rsa" else "EC"
    if w["key_type"] != want_key:
        why.append(f"the server's certificate was {w['key_type']} {w['key_bits']}, not {want_key}")
cpu_s = ticks / hz
row = dict(set=set_, round=int(rnd), workload=wl, path=path, mode=mode, server=srv,
           requests=req, duration_s=dur, rps=req / dur if dur else 0.0,
           p50_us=w["p50_us"], p90_us=w["p90_us"], p99_us=w["p99_us"], max_us=w["max_us"],
           cpu_ticks=ticks, cpu_s=cpu_s, req_per_cpu_s=(req / cpu_s) if cpu_s else None,
           bytes=w["bytes"], errors=errs, origin_requests=oreq, expect=expect, origin_split=split, origin_conns=int(oconns),
           origin_cpu_s=oticks / hz, wrk_cpu_s=wticks / hz,
           client_core_busy_s=cbusy / hz, server_core_busy_s=sbusy / hz,
           after=after, ok=not why, why="; ".join(why), **tls)
print(json.dumps(row))
EOF
  local last; last=$(tail -n1 "$RAW")
  $PY -c 'import json,sys; r=json.loads(sys.argv[1]); print("  round %d %-18s %-13s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  cpu %5.2f s  %9s req/cpu-s  origin cpu %5.2f s  wrk cpu %5.2f s  core busy %4.2f/%4.2f s%s %s" % (r["round"], r["workload"], r["server"], r["rps"], r["p50_us"]/1000, r["p99_us"]/1000, r["cpu_s"], "%.0f" % r["req_per_cpu_s"] if r["req_per_cpu_s"] else "-", r["origin_cpu_s"], r["wrk_cpu_s"], r["server_core_busy_s"], r["client_core_busy_s"], "  origins " + "/".join(map(str, r["origin_split"])) + " (%d new conns)" % r["origin_conns"] if len(r.get("origin_split", [])) > 1 else "", "" if r["ok"] else "FAILED: " + r["why"]))' "$last" >&2
  [ "$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["ok"])' "$last")" = True ] \
    || loud "$srv $wl round $round FAILED: $($PY -c 'import json,sys; print(json.loads(sys.argv[1])["why"])' "$last")"
}

# ---------------------------------------------------------------------------------------------
for set in "${sets[@]}"; do
  declare -F "set_$set" >/dev/null || die "unknown scenario set '$set' (known: ${ALL_SETS[*]})"
done
log "scenario sets: ${sets[*]}; rounds=$ROUNDS duration=$DURATION warmup=$WARMUP conns=$CONNS; servers on cpu $SERVER_CPU, wrk+origin on cpu $CLIENT_CPU"
log "output: $OUT"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start_origin
check_server origin || die "the origin itself is broken"

for set in "${sets[@]}"; do
  "set_$set"
  servers=()
  for s in "${SET_SERVERS[@]}"; do
    if [ -n "$SERVERS" ] && [[ " $SERVERS " != *" $s "* ]] && [ "$s" != limit ]; then continue; fi
    if [ -z "${PORT[$s]:-}" ]; then
      bring_up "$s" && servers+=("$s")
    elif check_server "$s"; then
      servers+=("$s")
    else
      FAILED+=("$s: failed its check")
    fi
  done
  [[ " ${servers[*]} " == *" limit "* ]] || die "the limit server is not available; ratios impossible"
  n=${#servers[@]}
  AFTER=none
  for round in $(seq 1 "$ROUNDS"); do
    # The order of a round: the server list rotated by (round - 1) / 2, reversed in even
    # rounds. A plain rotation keeps the cyclic order, so each server would always run right
    # after the same one (HAProxy's run before moat's, say) and whatever one run leaves
    # behind for the next (connections in TIME_WAIT, the origin's state, the host's
    # scheduling) would count for one server every time. Reversing every other round puts
    # each server after and before each neighbour equally often over an even number of rounds.
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${servers[$(((i + (round - 1) / 2) % n))]}"); done
    if [ $((round % 2)) -eq 0 ]; then
      rev=(); for ((i = n - 1; i >= 0; i--)); do rev+=("${order[$i]}"); done; order=("${rev[@]}")
    fi
    log "[$set] round $round/$ROUNDS: ${order[*]}"
    for w in "${SET_WORKLOADS[@]}"; do
      IFS=: read -r wl path mode <<<"$w"
      if [ -n "$WORKLOADS" ] && [[ " $WORKLOADS " != *" $wl "* ]]; then continue; fi
      for srv in "${order[@]}"; do
        ensure_alive "$srv" "$wl round $round" || continue
        measure "$set" "$round" "$wl" "$path" "$mode" "$srv" || FAILED+=("$srv: $wl round $round")
        AFTER=$srv
      done
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
moat_version="not measured"
if [ -x "$MOAT" ]; then
  moat_version="$("$MOAT" --version 2>/dev/null | head -n1 || true) (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
  [ -n "$(git -C "$ROOT" status --porcelain -- src 2>/dev/null)" ] && moat_version+=" + uncommitted src changes"
  moat_version+=")"
fi
$PY - "$OUT/meta.json" <<EOF
import json, sys
meta = {
  "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
  "out_dir": "bench/out/$STAMP",
  "command": """$ORIG_CMD""".strip(),
  "sets": "${sets[*]}".split(),
  "rounds": $ROUNDS, "duration": "$DURATION", "warmup": "$WARMUP", "conns": $CONNS,
  "tls_conns": $TLS_CONNS,
  "order": "rotated by (round - 1) / 2, reversed in even rounds",
  "server_cpu": "$SERVER_CPU", "client_cpu": "$CLIENT_CPU",
  "nproc": "$(nproc)",
  "cpu_model": """$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')""",
  "kernel": "$(uname -sr)",
  "loadavg_before": "$LOAD_BEFORE", "loadavg_after": "$LOAD_AFTER",
  "versions": {
    "nginx": """$(nginx -v 2>&1 | sed 's/^nginx version: //')""",
    "haproxy": """$(haproxy -v 2>&1 | head -n1)""",
    "varnish": """$(varnishd -V 2>&1 | head -n1 || echo none)""",
    "wrk": """$(wrk -v 2>&1 | head -n1)""",
    "openssl": """$(openssl version 2>&1 | head -n1)""",
    "moat": """$moat_version""",
  },
  "skipped": $($PY -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${SKIPPED[@]+"${SKIPPED[@]}"}"),
  "failed": $($PY -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${FAILED[@]+"${FAILED[@]}"}"),
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF

report_args=("$OUT")
if [ "$WRITE_RESULTS" = 1 ] && { [ -n "$MOAT_B" ] || [ -n "$WORKLOADS" ]; }; then
  loud "WRITE_RESULTS ignored: an A/B (MOAT_B) or a subset of workloads (WORKLOADS) is not the table"
  WRITE_RESULTS=0
fi
[ "$WRITE_RESULTS" = 1 ] && report_args+=(--results "$HERE/RESULTS.md")
$PY "$HERE/report.py" "${report_args[@]}" | tee "$OUT/table.md"
ln -sfn "$STAMP" "$HERE/out/latest"
log "raw runs: $RAW; table: $OUT/table.md"
[ "$WRITE_RESULTS" = 1 ] && log "wrote bench/RESULTS.md"

for s in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do loud "SKIPPED $s"; done
if [ "${#FAILED[@]}" -gt 0 ]; then
  loud "FAILED:" "${FAILED[@]}"
  exit 1
fi
