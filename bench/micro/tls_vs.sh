#!/usr/bin/env bash
# tls_vs.sh: server CPU per TLS handshake and per 1 KiB keep-alive response over TLS: moat's
# TLS transport (bench/micro/tls_serve.c, a minimal responder: the TLS layer moat's proxy will
# use, without moat's HTTP code) against nginx (`return 200`) and HAProxy (`http-request
# return`), each one worker/thread on SERVER_CPU, the load on CLIENT_CPU.
#
#   bash bench/micro/tls_vs.sh            # after make; ROUNDS=5 CONNS=1500 DURATION=4s
#
# Every server holds an ECDSA P-256 and an RSA-2048 certificate for the same name and picks by
# the client's signature algorithms. Rows:
#   full ECDSA / full RSA / resumed: TLS 1.3, tls_load.c, CONNS sequential connections each
#     with one request (Connection: close); "resumed" offers the newest ticket each time
#   full ECDSA TLS 1.2: the same with the client limited to TLS 1.2
#   1 KiB keep-alive: wrk -t1 -c32 over TLS 1.3 for DURATION
#   and the same two shapes over plain TCP on a second port of the same server (conn_plain,
#   ka_1k_plain): the second table subtracts them, leaving what TLS costs each server. The
#   first table flatters moat's responder, which does almost no HTTP work; the second compares
#   TLS layers.
# Server CPU is the on-CPU time of every thread of the server's processes
# (/proc/PID/task/TID/schedstat, nanoseconds) divided by the operations; the rounds rotate the
# server order; medians are printed.
# The peers run with their defaults (nginx: tickets, no session cache; HAProxy: tickets and a
# 20000-entry cache; moat: tickets and a 20480-entry cache), all with TLS 1.2 and 1.3.
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=tls_vs
PY=/usr/bin/python3
# shellcheck source=bench/lib/common.sh
. bench/lib/common.sh
bench_setup tls-vs
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-1500}
DURATION=${DURATION:-4s}
[ -f build/libmoat.a ] || die "run make first"

CC_FLAGS=(-std=c17 -D_GNU_SOURCE -O2 -g -Isrc)
gcc "${CC_FLAGS[@]}" -o "$TMP/tls_serve" bench/micro/tls_serve.c build/libmoat.a -lfyaml \
  -ljansson -lxxhash -lssl -lcrypto -pthread -lm
gcc "${CC_FLAGS[@]}" -o "$TMP/tls_load" bench/micro/tls_load.c -lssl -lcrypto

c="$TMP/certs"
mkdir -p "$c"
(
  cd "$c"
  printf 'subjectAltName=DNS:shop.test\n' >leaf.ext
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
  openssl req -x509 -key ca.key -subj /CN=bench-ca -days 3 -out ca.pem
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key
  for k in ec rsa; do
    openssl req -new -key $k.key -subj /CN=shop.test -out $k.csr
    openssl x509 -req -in $k.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 \
      -extfile leaf.ext -out $k.pem
    cat $k.pem $k.key >$k.both # HAProxy: certificate and key in one file
  done
) >/dev/null 2>&1 || die "cannot make certificates"

body=$(head -c 1024 /dev/zero | tr '\0' x)
declare -A PORT PLAIN PID
for s in moat nginx haproxy; do
  PORT[$s]=$(free_port)
  PLAIN[$s]=$(free_port)
done
start "$TMP/moat.log" "$SERVER_CPU" "$TMP/tls_serve" "${PORT[moat]}" "${PLAIN[moat]}" \
  "$c/ec.pem" "$c/ec.key" "$c/rsa.pem" "$c/rsa.key"
PID[moat]=$LASTPID
nginx_conf "$TMP/nginx" "${PORT[nginx]}" "
        listen 127.0.0.1:${PLAIN[nginx]};
        ssl_certificate $c/ec.pem; ssl_certificate_key $c/ec.key;
        ssl_certificate $c/rsa.pem; ssl_certificate_key $c/rsa.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { default_type text/plain; return 200 '$body'; }" "" "" ssl
start "$TMP/nginx.log" "$SERVER_CPU" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" \
  -g 'daemon off;'
PID[nginx]=$LASTPID
cat >"$TMP/haproxy.cfg" <<CFG
global
    nbthread 1
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout client 30s
    timeout connect 5s
    timeout server 30s
frontend f
    bind 127.0.0.1:${PORT[haproxy]} ssl crt $c/ec.both crt $c/rsa.both alpn http/1.1
    bind 127.0.0.1:${PLAIN[haproxy]}
    http-request return status 200 content-type text/plain string "$body"
CFG
start "$TMP/haproxy.log" "$SERVER_CPU" haproxy -db -f "$TMP/haproxy.cfg"
PID[haproxy]=$LASTPID
for s in moat nginx haproxy; do
  wait_port "${PID[$s]}" "${PORT[$s]}" || die "$s did not start (see $TMP/$s.log)"
done

# On-CPU nanoseconds of every thread of every process in <pid>'s session.
cpu_ns() {
  local p
  for p in $(pgrep -s "$1"); do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done |
    awk '{s += $1} END {printf "%.0f\n", s}'
}

# measure SERVER ROW -> prints microseconds of server CPU per operation
measure() {
  local s=$1 row=$2 t0 t1 ops out
  t0=$(cpu_ns "${PID[$s]}")
  case $row in
  full_ec) out=$(taskset -c "$CLIENT_CPU" "$TMP/tls_load" "${PORT[$s]}" "$CONNS") ;;
  full_rsa) out=$(taskset -c "$CLIENT_CPU" "$TMP/tls_load" "${PORT[$s]}" $((CONNS / 2)) rsa) ;;
  resumed) out=$(taskset -c "$CLIENT_CPU" "$TMP/tls_load" "${PORT[$s]}" "$CONNS" resume) ;;
  full_ec12) out=$(taskset -c "$CLIENT_CPU" "$TMP/tls_load" "${PORT[$s]}" "$CONNS" tls12) ;;
  conn_plain) out=$(taskset -c "$CLIENT_CPU" "$TMP/tls_load" "${PLAIN[$s]}" $((CONNS * 4)) plain) ;;
  ka_1k) out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c32 -d"$DURATION" "https://127.0.0.1:${PORT[$s]}/") ;;
  ka_1k_plain) out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c32 -d"$DURATION" "http://127.0.0.1:${PLAIN[$s]}/") ;;
  esac
  t1=$(cpu_ns "${PID[$s]}")
  case $row in
  ka_1k*) ops=$(awk '/requests in/ {print $1}' <<<"$out") ;;
  resumed)
    ops=$(awk '{print $1}' <<<"$out")
    local res
    res=$(awk '{print $3}' <<<"$out")
    [ "$res" -ge $((ops - 1)) ] || log "WARNING: $s resumed only $res of $ops"
    ;;
  *) ops=$(awk '{print $1}' <<<"$out") ;;
  esac
  echo "$t0 $t1 $ops" | awk '{printf "%.1f\n", ($2 - $1) / 1e3 / $3}'
}

read -r -a ROWS <<<"${ROWS:-full_ec full_rsa resumed full_ec12 conn_plain ka_1k ka_1k_plain}"
SERVERS=(moat nginx haproxy)
declare -A R
for ((r = 0; r < ROUNDS; r++)); do
  order=("${SERVERS[@]:r%3}" "${SERVERS[@]:0:r%3}")
  for row in "${ROWS[@]}"; do
    for s in "${order[@]}"; do
      R[$s.$row]+="$(measure "$s" "$row") "
    done
  done
  log "round $((r + 1))/$ROUNDS done"
done

declare -A D
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  printf 'server CPU in microseconds per operation, median of %d rounds (lower is better)\n' "$ROUNDS"
  printf '%-26s %10s %10s %10s %12s %12s\n' row moat nginx haproxy moat/nginx moat/haproxy
  for row in "${ROWS[@]}"; do
    m=$(median "${R[moat.$row]}")
    n=$(median "${R[nginx.$row]}")
    h=$(median "${R[haproxy.$row]}")
    printf '%-26s %10s %10s %10s %12.2f %12.2f\n' "$row" "$m" "$n" "$h" \
      "$(echo "$m / $n" | bc -l)" "$(echo "$m / $h" | bc -l)"
  done
  printf '\nwhat TLS costs each server: the row minus the same shape over plain TCP\n'
  printf '%-26s %10s %10s %10s %12s %12s\n' row moat nginx haproxy moat/nginx moat/haproxy
  for row in full_ec full_rsa resumed full_ec12 ka_1k; do
    base=conn_plain
    [ "$row" = ka_1k ] && base=ka_1k_plain
    for s in moat nginx haproxy; do
      D[$s]=$(echo "$(median "${R[$s.$row]}") - $(median "${R[$s.$base]}")" | bc -l)
    done
    printf '%-26s %10.1f %10.1f %10.1f %12.2f %12.2f\n' "$row - $base" "${D[moat]}" \
      "${D[nginx]}" "${D[haproxy]}" "$(echo "${D[moat]} / ${D[nginx]}" | bc -l)" \
      "$(echo "${D[moat]} / ${D[haproxy]}" | bc -l)"
  done
  printf '\nper round (moat | nginx | haproxy):\n'
  for row in "${ROWS[@]}"; do
    printf '%-10s %s| %s| %s\n' "$row" "${R[moat.$row]}" "${R[nginx.$row]}" "${R[haproxy.$row]}"
  done
} | tee "$OUT/results.txt"
