"""test_10_proxy_basic: ordinary proxying: forwarding headers, hop-by-hop removal, keep-alive,
pipelining, HEAD, 1xx/204/304, absolute-form, routing by Host, the access log."""

import time

from origins import response
from rawhttp import Client


def test_get_through_moat(moat, origin, http):
    r = http.get(moat.url("/a/b?c=d"), timeout=5)
    assert r.status_code == 200
    assert r.text == "ok main /a/b?c=d\n"
    assert r.headers["X-Origin"] == "main"
    (req,) = origin.requests
    assert req.method == "GET"
    assert req.target == "/a/b?c=d"
    assert req.version == "HTTP/1.1"


def test_forwarding_headers_set(moat, origin):
    with Client(moat.port) as c:
        c.send(f"GET /fw HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    (req,) = origin.requests
    assert req.header("Host") == "shop.example:8080"
    assert req.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert req.header("X-Forwarded-Proto") == "http"
    fwd = req.header("Forwarded")
    assert fwd is not None
    parts = {p.split("=", 1)[0].strip().lower(): p.split("=", 1)[1].strip().strip('"')
             for p in fwd.split(";")}
    assert parts["for"] == "127.0.0.1"
    assert parts["proto"] == "http"
    assert parts["host"] == "shop.example:8080"
    assert req.header("Via") == "1.1 moat"
    # and Via added on the way back
    assert any("1.1 moat" in v for v in r.header_all("Via")), r.headers


def test_via_appended_to_existing(moat_factory, origin_factory):
    def h(req, o):
        return response(200, "x", [("Via", "1.1 upstream-cache")])
    o = origin_factory(h)
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 corp-proxy\r\n\r\n")
        r = c.read_response()
    vias = ", ".join(o.requests[0].header_all("Via"))
    assert "1.0 corp-proxy" in vias and vias.rstrip().endswith("1.1 moat"), vias
    rvia = ", ".join(r.header_all("Via"))
    assert "1.1 upstream-cache" in rvia and "1.1 moat" in rvia, rvia


def test_xff_appended_for_trusted_peer(moat, origin):
    with Client(moat.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7, 10.1.2.3\r\n\r\n")
        assert c.read_response().status == 200
    xff = ", ".join(origin.requests[0].header_all("X-Forwarded-For"))
    assert xff.replace(" ", "") == "203.0.113.7,10.1.2.3,127.0.0.1"


def test_xff_replaced_for_untrusted_peer(moat_factory, origin):
    m = moat_factory(origin, trusted_proxies=["10.0.0.0/8"])
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\n"
               "Forwarded: for=203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\n")
        assert c.read_response().status == 200
    req = origin.requests[0]
    assert req.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert req.header_all("X-Forwarded-Proto") == ["http"]
    assert "203.0.113.7" not in ",".join(req.header_all("Forwarded"))



def test_forward_headers_subset(moat_factory, origin):
    """forward_headers: [x-forwarded-for]: only that field is set; a trusted peer's other
    forwarding fields pass as they came, an untrusted peer's are removed; Via always."""
    m = moat_factory(origin, forward_headers=["X-Forwarded-For"])  # names case-insensitive
    with Client(m.port) as c:
        c.send("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().status == 200
        c.send("GET /2 HTTP/1.1\r\nHost: a\r\nForwarded: for=192.0.2.1;proto=https\r\n"
               "X-Forwarded-Proto: https\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n")
        assert c.read_response().status == 200
    plain, relayed = origin.requests
    assert plain.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert not plain.has_header("X-Forwarded-Proto") and not plain.has_header("Forwarded")
    assert plain.header("Via") == "1.1 moat"
    # 127.0.0.1 is trusted in the test config: its fields are kept, XFF extended
    assert relayed.header_all("Forwarded") == ["for=192.0.2.1;proto=https"]
    assert relayed.header_all("X-Forwarded-Proto") == ["https"]
    assert relayed.header("X-Forwarded-For").replace(" ", "") == "192.0.2.1,127.0.0.1"

    untrusting = moat_factory(origin, forward_headers=[], trusted_proxies=["10.0.0.0/8"])
    with Client(untrusting.port) as c:
        c.send("GET /3 HTTP/1.1\r\nHost: a\r\nForwarded: for=192.0.2.1\r\n"
               "X-Forwarded-Proto: https\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n")
        assert c.read_response().status == 200
    spoofed = origin.requests[2]
    for h in ("X-Forwarded-For", "X-Forwarded-Proto", "Forwarded"):
        assert not spoofed.has_header(h), f"{h} forwarded: {spoofed.headers}"
    assert spoofed.header("Via") == "1.1 moat"


HOP_FIELDS = ("Connection: keep-alive, X-Secret\r\nX-Secret: do-not-forward\r\n"
              "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
              "Trailer: X-T\r\nUpgrade: h2c\r\nX-End-To-End: keep-me\r\n")


def test_hop_by_hop_removed_from_request(moat, origin):
    """Trailer is not hop-by-hop (RFC 9110 6.6.2): it goes along with a chunked body, whose
    trailers moat forwards, and is dropped from a request without one (nothing to announce)."""
    with Client(moat.port) as c:
        c.send("GET /hop HTTP/1.1\r\nHost: a\r\n" + HOP_FIELDS + "\r\n")
        assert c.read_response().status == 200
        c.send("POST /hop HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n" + HOP_FIELDS +
               "\r\n1\r\nx\r\n0\r\nX-T: 1\r\n\r\n")
        assert c.read_response().status == 200
    get, post = origin.requests
    for req, hop in ((get, ("Trailer",)), (post, ())):
        for h in ("X-Secret", "Keep-Alive", "Proxy-Connection", "TE", "Upgrade") + hop:
            assert not req.has_header(h), f"{h} forwarded: {req.headers}"
        conn = ",".join(req.header_all("Connection")).lower()
        assert "x-secret" not in conn and "upgrade" not in conn
        assert req.header("X-End-To-End") == "keep-me"
    assert post.header("Trailer") == "X-T"


def test_hop_by_hop_removed_from_response(moat_factory, origin_factory):
    def h(req, o):
        return response(200, "body", [("Connection", "X-Internal"), ("X-Internal", "secret"),
                                      ("Keep-Alive", "timeout=9"), ("Proxy-Connection", "x"),
                                      ("Upgrade", "h2c"), ("X-Public", "yes")])
    o = origin_factory(h)
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and r.body == b"body"
    for hh in ("X-Internal", "Keep-Alive", "Proxy-Connection", "Upgrade"):
        assert not r.has_header(hh), f"{hh} leaked to client: {r.headers}"
    assert "x-internal" not in r.conn_tokens()
    assert r.header("X-Public") == "yes"


def test_client_keepalive(moat, origin):
    with Client(moat.port) as c:
        for i in range(5):
            c.send(f"GET /k{i} HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response()
            assert r.status == 200
            assert r.body == f"ok main /k{i}\n".encode()
            assert "close" not in r.conn_tokens()


def test_pipelining_in_order(moat, origin):
    n = 20
    with Client(moat.port) as c:
        c.send("".join(f"GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n" for i in range(n)))
        for i in range(n):
            r = c.read_response()
            assert r.status == 200
            assert r.body == f"ok main /p{i}\n".encode()


def test_pipelining_mixed_methods_and_bodies(moat, origin):
    reqs = ("POST /echo1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"
            "POST /echo2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n0\r\n\r\n"
            "GET /last HTTP/1.1\r\nHost: a\r\n\r\n")
    with Client(moat.port) as c:
        c.send(reqs)
        assert c.read_response().body == b"hello"
        h = c.read_response("HEAD")
        assert h.status == 200 and h.body == b""
        assert c.read_response().body == b"abc"
        assert c.read_response().body == b"ok main /last\n"


def test_head_has_no_body(moat, origin):
    with Client(moat.port) as c:
        c.send("HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response("HEAD")
        assert r.status == 200
        assert r.header("Content-Length") == "13"
        # the next response must start right away: no body bytes may sit in between
        c.send("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == b"ok main /after\n"
    assert origin.requests[0].method == "HEAD"


def test_head_origin_wrongly_sends_body(moat_factory, origin_factory):
    """An origin that sends a body after a HEAD response is broken; moat must not pass those
    bytes to the client as if they were the next response."""
    def h(req, o):
        if req.method == "HEAD":
            return response(200, b"", [("Content-Length", "5")], content_length=False) + b"xxxxx"
        return response(200, b"fine")
    o = origin_factory(h)
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response("HEAD")
        assert r.status == 200 and r.header("Content-Length") == "5"
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == b"fine"


def test_204_and_304_have_no_body(moat, origin):
    with Client(moat.port) as c:
        for st in (204, 304):
            c.send(f"GET /status/{st} HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response()
            assert r.status == st
            assert not r.has_header("Transfer-Encoding")
        c.send("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().body == b"ok main /after\n"


def test_error_statuses_pass_through(moat, origin, http):
    for st in (404, 500, 503):
        r = http.get(moat.url(f"/status/{st}"), timeout=5)
        assert r.status_code == st
        assert r.text == f"status {st}\n"


def test_expect_100_continue(moat, origin):
    with Client(moat.port) as c:
        c.send("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n"
               "Expect: 100-continue\r\n\r\n")
        interim = c.read_response(allow_1xx=True)
        assert interim.status == 100
        c.send("hello world")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"hello world"
    assert origin.requests[0].body == b"hello world"


def test_absolute_form_target(moat, origin):
    with Client(moat.port) as c:
        c.send("GET http://shop.example/p/q?x=1 HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    req = origin.requests[0]
    assert req.target == "/p/q?x=1"
    assert req.header("Host") == "shop.example"


def test_absolute_form_authority_wins_over_host(moat, origin):
    with Client(moat.port) as c:
        c.send("GET http://right.example/ HTTP/1.1\r\nHost: wrong.example\r\n\r\n")
        assert c.read_response().status == 200
    assert origin.requests[0].header_all("Host") == ["right.example"]


def test_http10_client(moat, origin):
    with Client(moat.port) as c:
        c.send("GET /old HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"ok main /old\n"
        assert c.is_closed(), "HTTP/1.0 without keep-alive must be closed after the response"


def test_connection_close_honoured(moat, origin):
    with Client(moat.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert "close" in r.conn_tokens()
        assert c.is_closed()


def test_routing_by_host(moat_factory, origin_factory, http):
    a = origin_factory(name="shop")
    b = origin_factory(name="blog")
    d = origin_factory(name="default")
    cfg = moat_factory.config([d], pools={"shop": {"origins": [a.addr]},
                                          "blog": {"origins": [b.addr]}})
    cfg["sites"] = [{"hosts": ["shop.example", "www.shop.example"], "pool": "shop"},
                    {"hosts": ["*.blog.example"], "pool": "blog"},
                    {"hosts": ["*"], "pool": "main"}]
    m = moat_factory(config=cfg)
    for host, want in [("shop.example", "shop"), ("WWW.Shop.Example:80", "shop"),
                       ("x.blog.example", "blog"), ("other.example", "default")]:
        r = http.get(m.url("/"), headers={"Host": host}, timeout=5)
        assert r.status_code == 200
        assert r.headers["X-Origin"] == want, host


def test_access_log_lines(moat, origin, http):
    http.get(moat.url("/one?q=1"), timeout=5)
    http.post(moat.url("/echo"), data=b"12345", timeout=5)
    http.get(moat.url("/status/404"), timeout=5)
    lines = moat.access_lines(3)
    assert len(lines) == 3, lines
    for rec in lines:
        for k in ("time", "client", "method", "host", "path", "status", "bytes",
                  "duration_ms", "upstream", "upstream_ms"):
            assert k in rec, f"access log line lacks {k}: {rec}"
        assert rec["client"].startswith("127.0.0.1")
        assert rec["host"].startswith("127.0.0.1")
        assert rec["upstream"] == origin.addr
        assert rec["duration_ms"] >= 0 and rec["upstream_ms"] >= 0
        assert 0 <= rec["upstream_header_ms"] <= rec["upstream_ms"]
    by_path = {rec["path"]: rec for rec in lines}
    assert set(by_path) in ({"/one", "/echo", "/status/404"}, {"/one?q=1", "/echo", "/status/404"})
    one = by_path.get("/one") or by_path["/one?q=1"]
    assert one["method"] == "GET" and one["status"] == 200
    assert one["bytes"] >= len("ok main /one?q=1\n")
    assert by_path["/echo"]["method"] == "POST" and by_path["/echo"]["status"] == 200
    assert by_path["/status/404"]["status"] == 404


def test_access_log_upstream_header_time(moat_factory, origin_factory):
    # The origin sends its head after 200 ms and the body 300 ms later: upstream_header_ms
    # is the wait for the head (nginx's $upstream_header_time, HAProxy's Tr), upstream_ms
    # runs to the last byte. A 100 Continue does not count as the head; a request moat
    # answers itself has no upstream times at all.
    def h(req, o):
        if req.path == "/interim":
            return [b"HTTP/1.1 100 Continue\r\n\r\n", 0.2,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
        return [0.2, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 0.3, b"hello"]
    o = origin_factory(h)
    m = moat_factory(o, workers=1)
    with Client(m.port) as c:
        c.send("GET /slow-body HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello"
        c.send("GET /interim HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"ok"
        c.send("GET / HTTP/1.1\r\n\r\n")  # no Host: 400 from moat
        assert c.read_response().status == 400
    slow, interim, bad = m.access_lines(3)
    assert slow["path"] == "/slow-body"
    assert 180 <= slow["upstream_header_ms"] < 450, slow
    assert slow["upstream_ms"] - slow["upstream_header_ms"] >= 250, slow
    assert interim["path"] == "/interim" and 180 <= interim["upstream_header_ms"], interim
    assert bad["status"] == 400
    assert bad["upstream_ms"] is None and bad["upstream_header_ms"] is None, bad


def test_access_log_one_line_per_request(moat, origin):
    with Client(moat.port) as c:
        c.send("".join(f"GET /n{i} HTTP/1.1\r\nHost: a\r\n\r\n" for i in range(7)))
        for _ in range(7):
            c.read_response()
    time.sleep(0.2)
    lines = moat.access_lines(7)
    assert [l["path"] for l in lines] == [f"/n{i}" for i in range(7)]


def _unacked(sock):
    """tcpi_unacked from TCP_INFO: segments sent and not yet acknowledged by the peer."""
    import socket
    import struct
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("<I", info, 24)[0]  # after 8 one-byte fields and rto/ato/mss x2


def test_request_ack_rides_on_the_response(moat, origin):
    # moat's listeners turn quick ACKs off: the first request of a new connection is not
    # acknowledged by a packet of its own (the response carries the ACK; the kernel's delayed
    # ACK, at least 40 ms, covers a slow origin). With quick ACKs, the request would be
    # acknowledged at once, in well under the 10 ms we wait here.
    with Client(moat.port) as c:
        c.send("GET /delay/300 HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.01)
        assert _unacked(c.sock) == 1
        r = c.read_response()
        assert r.status == 200 and r.body == b"slow main\n"
        assert _unacked(c.sock) == 0


def test_connection_is_accepted_with_its_first_bytes(moat_factory, origin):
    # TCP_DEFER_ACCEPT on the listeners: the kernel hands a connection over when its first
    # bytes are in, so a silent connection is not one of moat's yet (the SYN-ACK
    # retransmission that would hand it over comes after about a second).
    m = moat_factory(origin, admin=True)
    with Client(m.port) as c:
        time.sleep(0.3)
        assert m.status()["connections_active"] == 0
        c.send("GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"ok main /first\n"
        assert m.status()["connections_active"] == 1
