#!/usr/bin/env bash
# origin_fwd_cost.sh: what moat's forwarding fields (X-Forwarded-For, X-Forwarded-Proto,
# Forwarded, Via) cost the origin. Runs the benchmark's origin (nginx, one process, a 1 KiB
# static file) under callgrind twice per variant, 1,000 and 3,000 keep-alive requests on one
# connection, and prints user-space instructions per request (the difference of the two runs
# over 2,000, so start-up and shutdown cancel out). Instruction counts repeat exactly, so
# this does not depend on the machine's noise. Kernel work is not counted.
#
#   bash bench/micro/origin_fwd_cost.sh        (needs nginx-light, valgrind; ~30 s)
set -euo pipefail
PY=/usr/bin/python3
PORT=${PORT:-18790}
T=$(mktemp -d /tmp/moat-fwdcost.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$T"' EXIT
mkdir -p "$T/www"
head -c 1024 /dev/zero | tr '\0' a >"$T/www/1k"
# shellcheck source=bench/lib/nginx.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/nginx.sh"
nginx_conf "$T" "$PORT" "
        location / { root $T/www; open_file_cache max=64 inactive=60s;
                     add_header Cache-Control \"public, max-age=3600\"; }" "tcp_nopush on;"
# The request as HAProxy forwards it in the benchmark, and as moat does (same Host).
cat >"$T/drive.py" <<'EOF'
import socket, sys
port, n, fwd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "fwd"
req = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port
if fwd:
    req += (b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
            b"Forwarded: for=127.0.0.1;proto=http;host=\"127.0.0.1:18502\"\r\nVia: 1.1 moat\r\n")
req += b"\r\n"
for _ in range(100):
    try:
        c = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        import time; time.sleep(0.1)
for _ in range(n):
    c.sendall(req)
    got = b""
    while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 1024:
        d = c.recv(65536)
        if not d:
            sys.exit("origin closed the connection")
        got += d
EOF
count() {   # VARIANT N -> instructions of the whole nginx run
  valgrind --tool=callgrind --callgrind-out-file="$T/cg.out" \
    nginx -p "$T" -c "$T/nginx.conf" -g "daemon off; master_process off;" >/dev/null 2>&1 &
  local pid=$!
  $PY "$T/drive.py" "$PORT" "$2" "$1"
  kill -QUIT "$pid"; wait "$pid" || true
  callgrind_annotate "$T/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
for v in plain fwd; do
  a=$(count "$v" 1000); b=$(count "$v" 3000)
  echo "$v: $(( (b - a) / 2000 )) instructions per request in the origin's user space"
done
