"""test_70_reload_drain: SIGHUP reloads (good, bad, under load) and SIGTERM drains."""

import copy
import re
import signal
import socket
import threading
import time

import pytest
import requests
import yaml

from origins import slow_handler
from rawhttp import Client


def with_origin(cfg, o):
    c = copy.deepcopy(cfg)
    c["pools"]["main"]["origins"] = [o.addr]
    return c


def wait_for_origin(m, name, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Client(m.port) as c:
            c.send("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            if c.read_response().header("X-Origin") == name:
                return True
        time.sleep(0.05)
    return False


def test_sighup_switches_origin(moat_factory, origin_factory):
    a = origin_factory(name="a")
    b = origin_factory(name="b")
    m = moat_factory(a, admin=True)
    gen = m.status()["generation"]
    assert wait_for_origin(m, "a", 0.1)
    m.reload(with_origin(m.config, b))
    assert wait_for_origin(m, "b"), "SIGHUP did not switch to the new origin"
    assert m.status()["generation"] == gen + 1
    assert m.alive()


def test_sighup_bad_config_keeps_serving(moat_factory, origin):
    m = moat_factory(origin, admin=True)
    gen = m.status()["generation"]
    text = yaml.safe_dump(m.config, sort_keys=False).splitlines()
    idx = next(i for i, l in enumerate(text) if l.startswith("workers:"))
    text[idx] = "workers: lots"
    m.reload("\n".join(text) + "\n")
    pat = re.escape(str(m.config_path)) + rf":{idx + 1}:\d+: "
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not re.search(pat, m.stderr()):
        time.sleep(0.05)
    assert re.search(pat, m.stderr()), f"no FILE:LINE:COL error logged:\n{m.stderr()[-2000:]}"
    assert m.alive()
    with Client(m.port) as c:
        c.send("GET /still HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and r.header("X-Origin") == "main"
    assert m.status()["generation"] == gen


def test_existing_keepalive_connection_survives_reload(moat_factory, origin_factory):
    a = origin_factory(name="a")
    b = origin_factory(name="b")
    m = moat_factory(a, admin=True)
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().header("X-Origin") == "a"
        gen = m.status()["generation"]
        m.reload(with_origin(m.config, b))
        deadline = time.monotonic() + 3
        while m.status()["generation"] == gen and time.monotonic() < deadline:
            time.sleep(0.02)
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        # each request uses the snapshot it starts with: a new request sees the new origin
        assert r.header("X-Origin") == "b"


@pytest.mark.timeout(90)
def test_reload_under_load_zero_failures(moat_factory, origin_factory):
    a = origin_factory(name="a")
    b = origin_factory(name="b")
    m = moat_factory(a, admin=True)
    cfg_a = with_origin(m.config, a)
    cfg_b = with_origin(m.config, b)
    per_thread = 500
    failures = []
    seen = {"a": 0, "b": 0}
    lock = threading.Lock()
    done = threading.Event()

    def worker(n):
        s = requests.Session()
        s.trust_env = False
        try:
            for i in range(per_thread):
                try:
                    r = s.get(m.url(f"/t{n}/{i}"), timeout=5)
                    if r.status_code != 200 or not r.text.startswith("ok "):
                        failures.append((n, i, r.status_code, r.text[:100]))
                    else:
                        with lock:
                            seen[r.headers["X-Origin"]] += 1
                except requests.RequestException as e:
                    failures.append((n, i, repr(e)))
        finally:
            s.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    gen0 = m.status()["generation"]
    for k in range(5):
        time.sleep(0.15)
        m.reload(cfg_b if k % 2 == 0 else cfg_a)
    for t in threads:
        t.join(60)
    done.set()
    assert not failures, f"{len(failures)} failed requests during reloads, e.g. {failures[:5]}"
    assert seen["a"] + seen["b"] == 4 * per_thread
    assert seen["b"] > 0, "no request reached the second origin"
    assert m.status()["generation"] == gen0 + 5
    assert m.alive()


def test_sigterm_drains_in_flight(moat_factory, origin_factory):
    o = origin_factory(slow_handler(1.0), name="slow")
    m = moat_factory(o, timeouts={"drain": "5s"})
    result = {}

    def slow_request():
        try:
            with Client(m.port, timeout=10) as c:
                c.send("GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
                r = c.read_response()
                result["status"] = r.status
                result["body"] = r.body
        except Exception as e:  # recorded, asserted below
            result["error"] = repr(e)

    t = threading.Thread(target=slow_request)
    t.start()
    o.wait_requests(1)
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    # stop accepting: new connections are refused soon after SIGTERM
    refused = False
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", m.port), timeout=0.2)
            s.close()
        except OSError:
            refused = True
            break
        time.sleep(0.02)
    t.join(10)
    code = m.proc.wait(10)
    took = time.monotonic() - t0
    assert result.get("status") == 200, result
    assert result.get("body") == b"slow slow\n"
    assert refused, "moat kept accepting connections after SIGTERM"
    assert code == 0, f"exit code {code}\n{m.stderr()[-2000:]}"
    assert took < 4.0, f"drain took {took:.2f}s for a 1s request"


def test_sigterm_idle_exits_fast(moat_factory, origin):
    m = moat_factory(origin)
    idle = Client(m.port)  # an idle keep-alive client must not hold up the exit
    idle.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    idle.read_response()
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    code = m.proc.wait(10)
    idle.close()
    assert code == 0
    assert time.monotonic() - t0 < 2.0


def test_drain_timeout_bounds_exit(moat_factory, origin_factory):
    o = origin_factory(slow_handler(8.0))
    m = moat_factory(o, timeouts={"drain": "1s"})
    c = Client(m.port, timeout=10)
    c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    o.wait_requests(1)
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    m.proc.wait(10)
    took = time.monotonic() - t0
    c.close()
    assert took < 3.0, f"exit took {took:.2f}s with drain 1s"
