# shellcheck shell=bash
# bench/lib/common.sh: what a bench script needs around its measurement, sourced after
# `set -euo pipefail` with BENCH (the log prefix) and PY set:
#   log / die                 messages on stderr
#   bench_setup NAME          TMP (a scratch dir), OUT (bench/out/NAME-<stamp>) and the traps:
#                             on exit, every process started with `start` is killed (its whole
#                             session), the *.log / *.conf / *.cfg / *.yaml files of TMP are
#                             kept in OUT/servers, and bench_on_exit runs if the script has one
#   free_port                 a free 127.0.0.1 port below the ephemeral range
#   start LOG CPU CMD...      runs CMD pinned to CPU in its own session; sets LASTPID
#   wait_port PID PORT        waits (10 s at most) until PORT accepts, false if PID died
#   stop_group PID            TERM PID's session, KILL it after 5 s
#   start_origin BODY [LOC]   nginx on CLIENT_CPU answering any path with BODY + "\n" from
#                             memory, Cache-Control: public, max-age=3600 (LOC: more location
#                             blocks); sets OPORT; origin_reqs prints its request count
#   start_moat DIR MEMORY     moat on SERVER_CPU from a YAML config in DIR: one worker on SPORT
#                             (set it first), cache.memory MEMORY, the admin API on APORT (set
#                             here), everything to the origin; sets LASTPID
#   moat_metric NAME          one value from moat's GET /metrics
#   nginx_conf ...            from bench/lib/nginx.sh (sourced here)

# shellcheck source=bench/lib/nginx.sh
. "$(dirname "${BASH_SOURCE[0]}")/nginx.sh"

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH" -1 "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

STARTED=()

stop_group() {
  local pid=$1 deadline=$((SECONDS + 5))
  kill -TERM -- "-$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${STARTED[@]}"; do stop_group "$pid"; done
  mkdir -p "$OUT/servers"
  (cd "$TMP" && find . -maxdepth 2 -type f \( -name '*.log' -o -name '*.conf' -o -name '*.cfg' \
    -o -name '*.yaml' \) -exec cp --parents {} "$OUT/servers/" \;) 2>/dev/null || true
  rm -rf "$TMP"
  if declare -F bench_on_exit >/dev/null; then bench_on_exit || true; fi
  exit "$rc"
}

bench_setup() {
  TMP=$(mktemp -d "/tmp/moat-$1.XXXXXX")
  chmod 755 "$TMP"
  OUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/out/$1-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$OUT"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

free_port() {
  $PY -c '
import random, socket
for _ in range(200):
    p = random.randrange(20000, 32000)
    try:
        s = socket.socket(); s.bind(("127.0.0.1", p)); s.close(); print(p); break
    except OSError:
        pass'
}

start() {
  local logf=$1 cpu=$2
  shift 2
  setsid taskset -c "$cpu" "$@" >"$logf" 2>&1 </dev/null &
  LASTPID=$!
  STARTED+=("$LASTPID")
  log "started pid $LASTPID: $*"
}

wait_port() {
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

start_origin() {
  OPORT=$(free_port)
  nginx_conf "$TMP/origin" "$OPORT" "
        location / {
            add_header Cache-Control \"public, max-age=3600\";
            return 200 \"$1\\n\";
        }
        ${2:-}
        location = /__origin_status { stub_status; }"
  start "$TMP/origin/stdout.log" "$CLIENT_CPU" nginx -p "$TMP/origin" -e "$TMP/origin/error.log" \
    -c "$TMP/origin/nginx.conf" -g 'daemon off;'
  wait_port "$LASTPID" "$OPORT" || die "origin nginx did not start"
}

origin_reqs() { curl -s --max-time 3 "http://127.0.0.1:$OPORT/__origin_status" | awk 'NR == 3 { print $3 }'; }

start_moat() {
  : "${SPORT:?set SPORT before start_moat}"
  APORT=$(free_port)
  mkdir -p "$1"
  cat >"$1/moat.yaml" <<EOF
listen: "127.0.0.1:$SPORT"
workers: 1
admin: { listen: "127.0.0.1:$APORT" }
cache: { memory: $2 }
pools:
  origin:
    origins: ["127.0.0.1:$OPORT"]
sites:
  - hosts: ["*"]
    pool: origin
EOF
  start "$1/moat.log" "$SERVER_CPU" "$MOAT" -c "$1/moat.yaml"
}

moat_metric() { curl -s --max-time 10 "http://127.0.0.1:$APORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
