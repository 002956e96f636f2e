# shellcheck shell=bash
# bench/lib/nginx.sh: the one nginx config every bench script writes (the origin, the `return
# 200` limit, the proxy and cache peers, the flash floor server, the micro benches).
#
#   nginx_conf DIR PORT SERVER_BODY [HTTP_EXTRA] [MAIN_EXTRA] [LISTEN_EXTRA]
#
# writes DIR/nginx.conf: one worker, no access log, sendfile and TCP_NODELAY, keep-alive
# requests unlimited (so that a benchmark client's connections are never recycled by the
# server; HAProxy and moat have no such limit), temp paths inside DIR, one server on
# 127.0.0.1:PORT with SERVER_BODY inside it. HTTP_EXTRA goes into http{}, MAIN_EXTRA at the top
# level, LISTEN_EXTRA after the listen address (e.g. "ssl"). The caller starts nginx (`-p DIR -c DIR/nginx.conf -g 'daemon off;'`).
nginx_conf() {
  local dir=$1 port=$2 body=$3 extra=${4:-} main=${5:-} lextra=${6:-}
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$main
events { worker_connections 8192; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy_temp;
    fastcgi_temp_path $dir/fastcgi_temp;
    uwsgi_temp_path $dir/uwsgi_temp;
    scgi_temp_path $dir/scgi_temp;
    $extra
    server {
        listen 127.0.0.1:$port $lextra backlog=4096;
        $body
    }
}
NGINX
}
