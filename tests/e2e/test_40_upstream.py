"""test_40_upstream: the origin side: connection pooling, retries on a stale pooled
connection, 502 on refused / broken origins, 504 on silent ones, Host handling."""

import socket
import struct
import time

from conftest import free_port, metric
from origins import (CLOSE, Takeover, close_reused_handler, default_handler, response,
                     silent_handler)
from rawhttp import Client


def test_pool_reuse_one_client_connection(moat_factory, origin):
    m = moat_factory(origin, workers=1)
    with Client(m.port) as c:
        for i in range(20):
            c.send(f"GET /r{i} HTTP/1.1\r\nHost: a\r\n\r\n")
            assert c.read_response().status == 200
    assert len(origin.requests) == 20
    assert origin.accepts == 1, f"{origin.accepts} origin connections for 20 sequential requests"


def test_pool_reuse_across_client_connections(moat_factory, origin):
    m = moat_factory(origin, workers=1)
    for i in range(10):
        with Client(m.port) as c:
            c.send(f"GET /c{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert c.read_response().status == 200
    assert len(origin.requests) == 10
    assert origin.accepts <= 2, f"{origin.accepts} origin connections for 10 requests"


def test_pool_reuse_two_workers(moat_factory, origin, http):
    m = moat_factory(origin, workers=2)
    for i in range(30):
        assert http.get(m.url(f"/w{i}"), timeout=5).status_code == 200
    assert origin.accepts < 30 and origin.accepts <= 4, origin.accepts


def test_connection_refused_is_502(moat_factory, http):
    dead = f"127.0.0.1:{free_port()}"
    m = moat_factory(dead, admin=True)
    r = http.get(m.url("/"), timeout=5)
    assert r.status_code == 502
    mt = m.metrics(until=lambda mt: metric(mt, "moat_requests_total", **{"class": "5xx"}) >= 1)
    assert metric(mt, "moat_upstream_errors_total", kind="connect") >= 1
    assert metric(mt, "moat_requests_total", **{"class": "5xx"}) >= 1


def test_silent_origin_is_504(moat_factory, origin_factory, http):
    o = origin_factory(silent_handler)
    m = moat_factory(o, admin=True, pools={"main": {"first_byte_timeout": "500ms"}})
    t0 = time.monotonic()
    r = http.get(m.url("/"), timeout=10)
    took = time.monotonic() - t0
    assert r.status_code == 504
    assert 0.4 <= took < 3.0, f"504 after {took:.2f}s with first_byte_timeout 500ms"
    mt = m.metrics(until=lambda mt: metric(mt, "moat_upstream_errors_total", kind="timeout") >= 1)
    assert metric(mt, "moat_upstream_errors_total", kind="timeout") >= 1
    assert len(o.requests) == 1, "a timed-out GET must not be resent to a silent origin"


def test_retry_once_on_stale_pooled_connection(moat_factory, origin_factory, http):
    o = origin_factory(close_reused_handler)
    m = moat_factory(o, workers=1)
    with Client(m.port) as c:
        c.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().status == 200
        c.send("GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, f"stale pooled connection not retried: {r.status}"
        assert r.body == b"ok o1 /two\n"
        c.send("HEAD /three HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response("HEAD").status == 200
    targets = [q.target for q in o.requests]
    assert targets.count("/two") == 2, targets  # once on the stale conn, once fresh
    assert o.accepts >= 2


def test_post_not_retried_on_stale_connection(moat_factory, origin_factory):
    o = origin_factory(close_reused_handler)
    m = moat_factory(o, workers=1)
    with Client(m.port) as c:
        c.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().status == 200
        c.send("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        r = c.read_response()
    assert r.status == 502, "a POST that may have reached the origin must not be replayed"
    posts = [q for q in o.requests if q.method == "POST"]
    assert len(posts) == 1


def test_retry_only_once(moat_factory, origin_factory, http):
    """First connection serves one request then dies on the next; every later connection
    dies at once: the retry happens once, then 502."""
    def h(req, o):
        if req.conn.n == 0 and req.index == 0:
            return default_handler(req, o)
        return CLOSE
    o = origin_factory(h)
    m = moat_factory(o, workers=1)
    with Client(m.port) as c:
        c.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().status == 200
        c.send("GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().status == 502
    assert [q.target for q in o.requests].count("/two") == 2


def test_bad_status_line_is_502(moat_factory, origin_factory, http):
    o = origin_factory(lambda req, o: [b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n", CLOSE])
    m = moat_factory(o, admin=True)
    r = http.get(m.url("/"), timeout=5)
    assert r.status_code == 502
    mt = m.metrics(until=lambda mt: metric(mt, "moat_upstream_errors_total", kind="bad_response") >= 1)
    assert metric(mt, "moat_upstream_errors_total", kind="bad_response") >= 1


def test_response_smuggling_is_502(moat_factory, origin_factory, http):
    """Content-Length plus chunked from an origin is ambiguous framing: 502, never a guess."""
    o = origin_factory(lambda req, o: [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", CLOSE])
    m = moat_factory(o)
    assert http.get(m.url("/"), timeout=5).status_code == 502


def test_origin_dies_mid_body(moat_factory, origin_factory):
    """The client must see a truncated response (connection closed), not a complete one."""
    o = origin_factory(lambda req, o: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
                                       b"only ten!!", 0.05, CLOSE])
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head = c.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        rest = c.read_all()
    assert len(rest) < 100 and rest.startswith(b"only ten!!"), rest


def test_origin_resets_before_response_get_is_retried_once_then_502(moat_factory,
                                                                    origin_factory, http):
    def rst(sock, rest):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST, not FIN
    o = origin_factory(lambda req, o: [Takeover(rst)])
    m = moat_factory(o, admin=True)
    r = http.get(m.url("/"), timeout=5)
    assert r.status_code == 502
    assert 1 <= len(o.requests) <= 2
    mt = m.metrics(until=lambda mt: metric(mt, "moat_upstream_errors_total", kind="reset") >= 1)
    assert metric(mt, "moat_upstream_errors_total", kind="reset") >= 1


def test_host_header_client(moat, origin, http):
    http.get(moat.url("/"), headers={"Host": "shop.example"}, timeout=5)
    assert origin.requests[0].header_all("Host") == ["shop.example"]


def test_host_header_origin(moat_factory, origin, http):
    m = moat_factory(origin, pools={"main": {"host_header": "origin"}})
    http.get(m.url("/"), headers={"Host": "shop.example"}, timeout=5)
    host = origin.requests[0].header_all("Host")
    assert len(host) == 1 and host[0].startswith("127.0.0.1"), host


def test_two_origins_both_used(moat_factory, origin_factory, http):
    a = origin_factory(name="a")
    b = origin_factory(name="b")
    m = moat_factory([a, b])
    seen = {http.get(m.url(f"/{i}"), timeout=5).headers["X-Origin"] for i in range(20)}
    assert seen == {"a", "b"}


def test_origin_keepalive_honours_connection_close(moat_factory, origin_factory):
    """An origin that says Connection: close is not reused."""
    def h(req, o):
        return response(200, "bye", [("Connection", "close")])
    o = origin_factory(h)
    m = moat_factory(o, workers=1)
    with Client(m.port) as c:
        for _ in range(3):
            c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.body == b"bye"
    assert o.accepts == 3
    assert all(q.index == 0 for q in o.requests)


def test_idle_pooled_connection_closed_by_origin_not_used(moat_factory, origin_factory):
    """Origin closes the idle connection right after answering (without saying so); the next
    request, a POST this time, must go on a fresh connection and succeed: moat notices the
    closed idle connection instead of sending into it."""
    def h(req, o):
        return [default_handler(req, o), 0.01, CLOSE]
    o = origin_factory(h)
    m = moat_factory(o, workers=1)
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().status == 200
        time.sleep(0.3)
        c.send("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
        r = c.read_response()
    assert r.status == 200 and r.body == b"ok"
