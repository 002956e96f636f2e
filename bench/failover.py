#!/usr/bin/env python3
"""bench/failover.py: an origin fails under steady load: moat vs HAProxy vs nginx.

    /usr/bin/python3 bench/failover.py                       # every server x scenario (~2.5 min)
    /usr/bin/python3 bench/failover.py --servers moat --scenarios kill --duration 6   # a check

Four origins (nginx, one process each, `return 200 "oN"`) behind the server under test, one
worker/thread each. The client keeps CLIENTS keep-alive connections and sends RATE GET/s in
all, each with a 3 s timeout, for DURATION seconds. At 1/3 of the run origin o2 fails:

- kill: SIGKILL (connections reset, then refused);
- stall: SIGSTOP (it still accepts connections, answers nothing);
- restart: SIGKILL, started again at 2/3 of the run.

Reported per run: requests, failed (error, timeout or non-200), and for restart the seconds
from the restart to the first answer from o2 again. The servers as configured here:

- moat: an http monitor every 500 ms (fall 2, rise 1, timeout 500 ms), try_timeout 500 ms,
  passive ejection after 1 failure, retries 2 (the default);
- haproxy: balance roundrobin, option redispatch, retries 2, option httpchk every 500 ms
  (fall 2, rise 1), timeout server 3 s;
- nginx: upstream with max_fails=1 fail_timeout=10s, proxy_next_upstream error timeout,
  proxy_read_timeout 3 s, keepalive 32.

Output: a markdown table on stdout; raw figures in bench/out/failover-<stamp>/runs.jsonl.
"""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOAT = os.environ.get("MOAT", str(ROOT / "moat"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Proc:
    def __init__(self, argv, log):
        self.argv, self.log = argv, log
        self.p = None

    def start(self):
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=open(self.log, "ab"),
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, sig):
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, sig)

    def stop(self):
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGCONT)
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(5)


def origin(d, i, port):
    conf = d / f"o{i}.conf"
    conf.write_text(f"""daemon off; master_process off; worker_processes 1;
error_log {d}/o{i}.err; pid {d}/o{i}.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} reuseport; location / {{ return 200 "o{i}\\n"; }} }} }}
""")
    return Proc(["nginx", "-c", str(conf), "-p", str(d)], d / f"o{i}.log")


def server(name, d, port, oports):
    if name == "moat":
        origins = ", ".join(f'"127.0.0.1:{p}"' for p in oports)
        (d / "moat.yaml").write_text(f"""listen: ["127.0.0.1:{port}"]
workers: 1
cache: {{ enabled: false }}
log: {{ error: stderr, level: warn }}
monitors:
  web: {{ type: http, path: /, interval: 500ms, timeout: 500ms, fall: 2, rise: 1 }}
pools:
  o:
    origins: [{origins}]
    monitor: web
    connect_timeout: 1s
    first_byte_timeout: 3s
    try_timeout: 500ms
    passive: {{ failures: 1, eject: 10s }}
sites: [{{ hosts: ["*"], pool: o }}]
""")
        return Proc([MOAT, "-c", str(d / "moat.yaml")], d / "moat.log")
    if name == "haproxy":
        servers = "\n".join(f"  server o{i} 127.0.0.1:{p} check inter 500ms fall 2 rise 1"
                            for i, p in enumerate(oports, 1))
        (d / "haproxy.cfg").write_text(f"""global
  nbthread 1
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 3s
  retries 2
  option redispatch 1
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  balance roundrobin
  http-reuse always
  option httpchk GET /
{servers}
""")
        return Proc(["haproxy", "-f", str(d / "haproxy.cfg")], d / "haproxy.log")
    if name == "nginx":
        ups = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in oports)
        (d / "nginx.conf").write_text(f"""daemon off; master_process off; worker_processes 1;
error_log {d}/nginx.err; pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off;
  upstream u {{
{ups}
    keepalive 32;
  }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_next_upstream error timeout; proxy_connect_timeout 1s; proxy_read_timeout 3s; }} }} }}
""")
        return Proc(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)], d / "nginx.log")
    raise SystemExit(f"unknown server {name}")


def client(port, rate, conns, duration, t0, out, lock):
    """One paced keep-alive connection; appends (t_sent, ok, body)."""
    interval = conns / rate
    c = None
    n = 0
    while True:
        due = t0 + n * interval
        now = time.monotonic()
        if due - t0 >= duration:
            break
        if due > now:
            time.sleep(due - now)
        n += 1
        sent = time.monotonic()
        ok, body = False, ""
        try:
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            c.request("GET", "/")
            r = c.getresponse()
            body = r.read().decode(errors="replace").strip()
            ok = r.status == 200
            if r.getheader("Connection", "").lower() == "close":
                c.close()
                c = None
        except Exception:  # noqa: BLE001
            if c:
                c.close()
            c = None
        with lock:
            out.append((sent - t0, ok, body))


def run(name, scenario, args, base):
    d = Path(tempfile.mkdtemp(prefix=f"{name}-{scenario}-", dir=base))
    oports = [free_port() for _ in range(4)]
    origins = [origin(d, i, p) for i, p in enumerate(oports, 1)]
    port = free_port()
    srv = server(name, d, port, oports)
    try:
        for o in origins:
            o.start()
        for p in oports:
            assert wait_port(p), "an origin did not start"
        srv.start()
        assert wait_port(port), f"{name} did not start (see {d})"
        time.sleep(1.5)  # first health checks
        out, lock = [], threading.Lock()
        t0 = time.monotonic() + 0.2
        ts = [threading.Thread(target=client, args=(port, args.rate, args.clients, args.duration,
                                                    t0, out, lock)) for _ in range(args.clients)]
        for t in ts:
            t.start()
        fail_at, back_at = args.duration / 3, 2 * args.duration / 3
        time.sleep(max(0, t0 + fail_at - time.monotonic()))
        victim = origins[1]
        victim.signal(signal.SIGSTOP if scenario == "stall" else signal.SIGKILL)
        restarted = None
        if scenario == "restart":
            time.sleep(max(0, t0 + back_at - time.monotonic()))
            victim.start()
            restarted = time.monotonic() - t0
        for t in ts:
            t.join()
        victim.signal(signal.SIGCONT)
        failed = sum(1 for _, ok, _ in out if not ok)
        back = None
        if restarted is not None:
            firsts = [t for t, ok, b in out if ok and b == "o2" and t >= restarted]
            back = round(min(firsts) - restarted, 2) if firsts else None
        return {"server": name, "scenario": scenario, "requests": len(out), "failed": failed,
                "back_s": back, "dir": str(d)}
    finally:
        srv.stop()
        for o in origins:
            o.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", default="moat,haproxy,nginx")
    ap.add_argument("--scenarios", default="kill,stall,restart")
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--clients", type=int, default=20)
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = ROOT / "bench" / "out" / f"failover-{stamp}"
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    for sc in args.scenarios.split(","):
        for name in args.servers.split(","):
            r = run(name, sc, args, base)
            rows.append(r)
            with open(base / "runs.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"[failover] {name} {sc}: {r['failed']} failed of {r['requests']}"
                  + (f", back after {r['back_s']} s" if sc == "restart" else ""), file=sys.stderr)
    print(f"\n{args.clients} keep-alive clients, {args.rate:.0f} GET/s for {args.duration:.0f} s; "
          f"origin o2 fails at {args.duration / 3:.0f} s (restart: back at "
          f"{2 * args.duration / 3:.0f} s); client timeout 3 s\n")
    print("| server | scenario | requests | failed | back after restart (s) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        back = "" if r["scenario"] != "restart" else (r["back_s"] if r["back_s"] is not None
                                                      else "never")
        print(f"| {r['server']} | {r['scenario']} | {r['requests']} | {r['failed']} | {back} |")


if __name__ == "__main__":
    main()
