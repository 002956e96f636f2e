#!/usr/bin/python3
"""bench/attacks.py: the attack battery of issue 22. Five attacks, one at a time, against each
server, while a probe client makes normal requests; a server "held" an attack when the probe
kept >= 99% success and a p99 under 1 s.

    /usr/bin/python3 bench/attacks.py                 # every server, 15 s per attack (~8 min)
    QUICK=1 /usr/bin/python3 bench/attacks.py         # 4 s per attack, 300 slow / 3000 flood
                                                      # connections (smoke test, ~1 min)
    SERVERS="moat-limits moat-defaults" DURATION=20 /usr/bin/python3 bench/attacks.py

Servers (one worker each, pinned to SERVER_CPU [0]; the origin, the attackers and the probe
share CLIENT_CPU [1], like bench/run.sh):
  moat-limits    moat with the issue's shield limits: rate_limits (/api/* 20/s burst 40 count
                 origin; everything 300/s burst 600, by client_ip), connections.per_ip 200, and
                 access rules (user agent, path); timeouts left at their defaults
  moat-defaults  moat with no shield rule and every timeout at its default
  haproxy        timeout http-request 10s (+ option http-buffer-request, so it covers the body),
                 timeout client 30s, maxconn 8000 (the fd limit here is 20000), a stick table on src: conn_cur > 200
                 rejected at connection, http_req_rate(1s) > 300 denied with 429
  nginx          worker_connections 10000 (moat's limits.connections), client_header_timeout,
                 client_body_timeout and send_timeout 10s, limit_req
                 300r/s burst=600 nodelay and limit_conn 200 per $binary_remote_addr

Attacks (from 127.0.0.1; the probe connects from 127.0.0.2, so per-address limits can tell
them apart, as they would two real clients):
  slow-headers   slowhttptest -H: CONNS [1000] connections, each sends a header line every 5 s
  slow-body      slowhttptest -B: CONNS POSTs announcing 8 KiB, 16 bytes of body every 5 s
  slow-read      slowhttptest -X: CONNS connections asking for a 512 KiB cached object three
                 times per connection, with a receive window of 512-1024 bytes, reading 32 bytes
                 every 2 s
  conn-flood     bench/lib/conn_flood.py: FLOOD_CONNS [15000] connections held open (half idle,
                 half with a request line and nothing more), each reopened as soon as it is
                 closed: more than moat's limits.connections (10000 per worker), HAProxy's
                 maxconn or nginx's worker_connections here, so a server that refuses
                 newcomers when full falls
  req-flood      wrk -t1 -c50: GETs of the cached 1 KiB object as fast as one core sends them
The probe: 10 requests/s, each on a new connection (a new visitor, so a full accept queue or a
per-address limit would show), GET of the cached 1 KiB object, 5 s timeout; a failure is an
error, a timeout or a non-2xx status. p99 counts failed requests at the time they took to fail.

Why 1 s: unloaded, the probe's p99 is a few ms here; a second is where a visitor notices a
page as broken rather than slow (and slowhttptest's own probe only calls a server down after
5 s), so "held" means the visitors were served as a visitor would expect, not merely eventually.

Careful on a shared machine: the slow-read attack with 1000 connections against a server that
does not bound what the kernel queues per client (moat before limits.send_queue; nginx and
HAProxy as configured here) can take over 2 GB of kernel socket memory, which puts every TCP
socket of the host under memory pressure (net.ipv4.tcp_mem), other programs' too.

Output: the table on stdout and in bench/out/attacks-<stamp>/table.md, raw results in
results.jsonl, server logs and configs in servers/.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QUICK = os.environ.get("QUICK", "0") == "1"
DURATION = float(os.environ.get("DURATION", "4" if QUICK else "15"))
CONNS = int(os.environ.get("CONNS", "300" if QUICK else "1000"))
FLOOD_CONNS = int(os.environ.get("FLOOD_CONNS", "3000" if QUICK else "15000"))
SERVERS = os.environ.get("SERVERS", "moat-limits moat-defaults haproxy nginx").split()
ATTACKS = os.environ.get("ATTACKS", "slow-headers slow-body slow-read conn-flood req-flood").split()
SERVER_CPU = os.environ.get("SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("CLIENT_CPU", "1")
MOAT = os.environ.get("MOAT", os.path.join(ROOT, "moat"))
PROBE_RATE = float(os.environ.get("PROBE_RATE", "10"))
PROBE_SRC = "127.0.0.2"
P99_BOUND_MS = 1000.0
OK_SHARE = 0.99

STAMP = time.strftime("%Y%m%d-%H%M%S")
OUT = os.path.join(HERE, "out", f"attacks-{STAMP}")
TMP = tempfile.mkdtemp(prefix="moat-attacks.")
os.chmod(TMP, 0o755)
started = []


def log(msg):
    print(f"[attacks {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    import random
    for _ in range(200):
        p = random.randrange(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            pass
        finally:
            s.close()
    raise SystemExit("no free port")


def start(logf, cpu, argv):
    f = open(logf, "wb")
    p = subprocess.Popen(["taskset", "-c", cpu] + argv, stdout=f, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    started.append(p)
    log(f"started pid {p.pid}: {' '.join(argv)}")
    return p


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def wait_port(p, port):
    for _ in range(100):
        if p.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


NGINX_HTTP = """worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    {extra}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        {body}
    }}
}}
"""


def nginx(name, port, body, extra=""):
    d = os.path.join(TMP, name)
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(NGINX_HTTP.format(d=d, port=port, body=body, extra=extra))
    return d, ["nginx", "-p", d, "-e", f"{d}/error.log", "-c", f"{d}/nginx.conf", "-g", "daemon off;"]


def start_origin():
    port = free_port()
    d = os.path.join(TMP, "origin")
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/big", "wb") as f:
        f.write(b"b" * (512 * 1024))
    d, argv = nginx("origin", port, f"""
        add_header Cache-Control "public, max-age=3600";
        location = /big {{ alias {d}/big; }}
        location / {{ return 200 "{'x' * 1023}\\n"; }}""")
    p = start(f"{d}/stdout.log", CLIENT_CPU, argv)
    if not wait_port(p, port):
        raise SystemExit("origin did not start")
    return port


def moat_conf(d, port, oport, shield):
    aport = free_port()
    text = f"""listen: "127.0.0.1:{port}"
workers: 1
admin: {{ listen: "127.0.0.1:{aport}" }}
cache: {{ memory: 64MiB }}
pools: {{ origin: {{ origins: ["127.0.0.1:{oport}"] }} }}
sites: [{{ hosts: ["*"], pool: origin }}]
"""
    if shield:
        text += f"""shield:
  rate_limits:
    - {{ match: {{ path: "/api/*" }}, key: client_ip, rate: 20/s, burst: 40, count: origin }}
    - {{ match: {{}}, key: client_ip, rate: 300/s, burst: 600 }}
  connections: {{ per_ip: 200 }}
  access:
    - {{ match: {{ user_agent: "*BadBot*" }}, action: block }}
    - {{ match: {{ path: "/wp-login.php" }}, action: challenge }}
  challenge: {{ difficulty: 18, clearance: 30m, secret_file: {d}/shield.key }}
"""
    with open(f"{d}/moat.yaml", "w") as f:
        f.write(text)
    return [MOAT, "-c", f"{d}/moat.yaml"]


def haproxy_conf(d, port, oport):
    with open(f"{d}/haproxy.cfg", "w") as f:
        f.write(f"""global
    nbthread 1
    maxconn 9000
    pidfile {d}/haproxy.pid
defaults
    mode http
    option http-keep-alive
    option http-buffer-request
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 10s
frontend fe
    bind 127.0.0.1:{port}
    maxconn 8000
    stick-table type ip size 100k expire 30s store conn_cur,http_req_rate(1s)
    tcp-request connection track-sc0 src
    tcp-request connection reject if {{ sc_conn_cur(0) gt 200 }}
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 300 }}
    default_backend be
backend be
    http-reuse always
    http-request cache-use c
    http-response cache-store c
    server origin 127.0.0.1:{oport}
cache c
    total-max-size 64
    max-object-size 1048576
    max-age 3600
""")
    subprocess.run(["haproxy", "-c", "-q", "-f", f"{d}/haproxy.cfg"], check=True)
    return ["haproxy", "-db", "-f", f"{d}/haproxy.cfg"]


def start_server(name, oport):
    port = free_port()
    d = os.path.join(TMP, name)
    os.makedirs(d, exist_ok=True)
    if name == "moat-limits":
        argv = moat_conf(d, port, oport, True)
    elif name == "moat-defaults":
        argv = moat_conf(d, port, oport, False)
    elif name == "haproxy":
        argv = haproxy_conf(d, port, oport)
    elif name == "nginx":
        d, argv = nginx(name, port, """
        client_header_timeout 10s;
        client_body_timeout 10s;
        send_timeout 10s;
        location / {
            limit_req zone=rl burst=600 nodelay;
            limit_req_status 429;
            limit_conn cl 200;
            proxy_pass http://o;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache c;
        }""", f"""limit_req_zone $binary_remote_addr zone=rl:10m rate=300r/s;
    limit_conn_zone $binary_remote_addr zone=cl:10m;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=c:10m max_size=64m inactive=1h use_temp_path=off;
    upstream o {{ server 127.0.0.1:{oport}; keepalive 32; }}""")
    else:
        raise SystemExit(f"unknown server {name}")
    p = start(f"{d}/stdout.log", SERVER_CPU, argv)
    if not wait_port(p, port):
        raise SystemExit(f"{name} did not start (see {d})")
    return p, port


def get(port, path, timeout=5.0, src=PROBE_SRC):
    """One GET on a new connection from src; (ok, seconds)."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout, source_address=(src, 0))
        s.settimeout(max(0.01, timeout - (time.monotonic() - t0)))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
            if time.monotonic() - t0 > timeout:
                raise TimeoutError
        s.close()
        ok = data.startswith(b"HTTP/1.1 2") and len(data) > 1024
        return ok, time.monotonic() - t0
    except OSError:
        return False, time.monotonic() - t0


def probe(port, secs, results):
    """PROBE_RATE requests per second for secs, each in its own thread (a slow one does not delay
    the next); results gets (ok, seconds) per request."""
    threads = []
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i / PROBE_RATE
        if due - t0 >= secs:
            break
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        t = threading.Thread(target=lambda: results.append(get(port, "/probe")))
        t.start()
        threads.append(t)
        i += 1
    for t in threads:
        t.join()


def summarize(results):
    n = len(results)
    ok = sum(1 for r in results if r[0])
    lat = sorted(r[1] * 1000 for r in results)
    p99 = lat[min(n - 1, int(0.99 * n))] if n else None
    share = ok / n if n else 0.0
    held = n > 0 and share >= OK_SHARE and p99 < P99_BOUND_MS
    return {"probes": n, "ok": ok, "ok_share": round(share, 4), "p99_ms": round(p99, 1) if p99 is not None else None,
            "held": held}


def attack_cmd(attack, port, secs):
    url = f"http://127.0.0.1:{port}"
    length = str(int(secs) + 3)  # slowhttptest counts from its first connection
    rate = str(max(50, CONNS // 2))
    if attack == "slow-headers":
        return ["slowhttptest", "-H", "-c", str(CONNS), "-r", rate, "-i", "5", "-l", length,
                "-u", url + "/", "-p", "5"]
    if attack == "slow-body":
        return ["slowhttptest", "-B", "-c", str(CONNS), "-r", rate, "-i", "5", "-s", "8192", "-x", "10",
                "-l", length, "-u", url + "/", "-p", "5"]
    if attack == "slow-read":
        return ["slowhttptest", "-X", "-c", str(CONNS), "-r", rate, "-k", "3", "-w", "512", "-y", "1024",
                "-n", "2", "-z", "32", "-l", length, "-u", url + "/big", "-p", "5"]
    if attack == "conn-flood":
        return ["/usr/bin/python3", os.path.join(HERE, "lib", "conn_flood.py"), "127.0.0.1", str(port),
                str(FLOOD_CONNS), str(secs + 2)]
    if attack == "req-flood":
        return ["wrk", "-t1", "-c50", "-d", f"{int(secs) + 2}s", url + "/"]
    raise SystemExit(f"unknown attack {attack}")


def run_attack(name, port, attack, d):
    logf = os.path.join(d, f"{attack}.out")
    a = start(logf, CLIENT_CPU, attack_cmd(attack, port, DURATION))
    time.sleep(min(3.0, DURATION / 3))  # let the attack build up
    results = []
    probe(port, DURATION - min(3.0, DURATION / 3), results)
    stop(a)
    row = {"server": name, "attack": attack, **summarize(results)}
    with open(logf, "rb") as f:
        tail = f.read()[-400:].decode(errors="replace")
    if attack == "req-flood":
        for line in tail.splitlines():
            if "Requests/sec" in line or "Non-2xx" in line:
                row["attack_note"] = (row.get("attack_note", "") + " " + line.strip()).strip()
    elif attack == "conn-flood":
        row["attack_note"] = tail.strip().splitlines()[-1] if tail.strip() else ""
    return row


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    os.makedirs(OUT, exist_ok=True)
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {int(CLIENT_CPU)})  # the probe runs here, beside the attackers
    for tool in ("slowhttptest", "wrk", "haproxy", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run scripts/install-deps")
    log(f"duration {DURATION}s per attack, {CONNS} slow connections, {FLOOD_CONNS} flood connections, "
        f"load average {loadavg()}")
    oport = start_origin()
    rows = []
    res = open(os.path.join(OUT, "results.jsonl"), "w")
    for name in SERVERS:
        p, port = start_server(name, oport)
        d = os.path.join(TMP, name)
        for path in ("/", "/probe", "/big"):  # fill the caches
            get(port, path, src="127.0.0.3")
            get(port, path, src="127.0.0.3")
        base = []
        probe(port, 2, base)
        log(f"{name}: unloaded probe {summarize(base)}")
        for attack in ATTACKS:
            time.sleep(1)
            row = run_attack(name, port, attack, d)
            row["load"] = loadavg()
            if p.poll() is not None:
                row["note"] = f"server exited ({p.returncode})"
                row["held"] = False
            log(json.dumps(row))
            res.write(json.dumps(row) + "\n")
            res.flush()
            rows.append(row)
            if p.poll() is not None:
                p, port = start_server(name, oport)
        stop(p)
    table = ["| server | " + " | ".join(ATTACKS) + " | held |", "|---|" + "---|" * (len(ATTACKS) + 1)]
    for name in SERVERS:
        cells, held = [], 0
        for attack in ATTACKS:
            r = next((r for r in rows if r["server"] == name and r["attack"] == attack), None)
            if r is None:
                cells.append("-")
                continue
            held += r["held"]
            cells.append(f"{'held' if r['held'] else '**fell**'} ({100 * r['ok_share']:.1f}%, p99 {r['p99_ms']:g} ms)")
        table.append(f"| {name} | " + " | ".join(cells) + f" | {held}/{len(ATTACKS)} |")
    text = "\n".join(table)
    print(text)
    with open(os.path.join(OUT, "table.md"), "w") as f:
        f.write(text + "\n")
    log(f"results: {OUT}")


def cleanup():
    for p in started:
        if p.poll() is None:
            stop(p)
    keep = os.path.join(OUT, "servers")
    for dirpath, _, files in os.walk(TMP):
        for fn in files:
            if fn.endswith((".log", ".conf", ".cfg", ".yaml", ".out")):
                rel = os.path.relpath(os.path.join(dirpath, fn), TMP)
                os.makedirs(os.path.join(keep, os.path.dirname(rel)), exist_ok=True)
                shutil.copy(os.path.join(dirpath, fn), os.path.join(keep, rel))
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    finally:
        cleanup()
