"""test_95_h2: HTTP/2 from clients (src/proxy/h2conn.c, docs/http2.md): h2c with prior
knowledge on a listener with h2c: true, ALPN h2 on TLS listeners; requests and bodies both
ways through the proxy and the cache; the translation of RFC 9113 (pseudo-headers, Host vs
:authority, cookies, connection-specific fields, content-length, CONNECT); flow control with
bounded memory; the flood limits, each answered while another connection is still served;
GOAWAY on drain; the moat_http2_* metrics. Driven by python3-h2 (h2client.py) and by curl,
nghttp and h2load (Debian nghttp2-client)."""

import json
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import free_port, metric
from h2client import H2, PREFACE, frame, h2_context
from origins import default_handler, early_hints_handler, pattern, response
from rawhttp import Client

MIB = 1024 * 1024
PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 1, 2, 7, 8, 11


def handler(req, origin):
    """default_handler plus: /c/...: cacheable for a minute; /hdrs: the request's fields as
    JSON; /hop: a response full of hop-by-hop fields; /trailers: a chunked body with a
    trailer section."""
    p = req.path
    if p.startswith("/c/"):
        n = int(p.rsplit("/", 1)[1]) if p.rsplit("/", 1)[1].isdigit() else 100
        return response(200, pattern(n), [("Cache-Control", "public, max-age=60"),
                                          ("X-Origin", origin.name)])
    if p == "/hdrs":
        return response(200, json.dumps({"method": req.method, "target": req.target,
                                         "headers": req.headers}), [("X-Origin", origin.name)])
    if p == "/hop":
        return response(200, b"hop\n", [("Connection", "keep-alive, X-Private"),
                                         ("Keep-Alive", "timeout=5"), ("X-Private", "1"),
                                         ("Proxy-Connection", "keep-alive"), ("X-Kept", "yes")])
    if p == "/trailers":
        head = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n")
        return head
    return default_handler(req, origin)


@pytest.fixture
def h2origin(origin_factory):
    return origin_factory(handler, "o1")


def h2_moat(moat_factory, origins, pki=None, http2=None, **over):
    """A moat whose plain listener has h2c: true (and a TLS listener too with <pki>)."""
    origins = origins if isinstance(origins, list) else [origins]
    if pki is not None:
        cfg = moat_factory.tls_config(origins, pki, **over)
    else:
        cfg = moat_factory.config(origins, admin=True, **over)
    cfg["listen"][0] = {"addr": cfg["listen"][0], "h2c": True}
    if http2:
        cfg["http2"] = http2
    m = moat_factory(config=cfg)
    return m


def h1get(c, path):
    c.send(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
    return c.read_response()


def h2m(m, until=None):
    return m.metrics(until=until)


# --- h2c, ALPN, bodies ------------------------------------------------------------------------

def test_h2c_get_head_sizes(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        for n in (0, 1024, 10 * MIB):
            r = c.get(f"/size/{n}")
            assert r.status == 200 and bytes(r.body) == pattern(n), (n, r.status, len(r.body))
            assert r.header("content-length") == str(n)
        r = c.get("/size/1024", method="HEAD")
        assert r.status == 200 and r.body == b"" and r.header("content-length") == "1024"
    # the same listener still speaks HTTP/1.1
    with Client(m.port) as h1:
        r = h1get(h1, "/size/10")
        assert r.status == 200 and r.body == pattern(10)
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_streams_total") >= 4)
    assert metric(mt, "moat_http2_connections_total") == 1
    assert metric(mt, "moat_http2_streams_total") == 4
    lines = m.access_lines(5)
    assert sum(1 for l in lines if l["path"] == "/size/10485760" and l["status"] == 200) == 1


def test_plain_listener_without_h2c_refuses_preface(moat_factory, h2origin):
    """h2c is opt-in: a listener without it answers the preface as an HTTP/1 request of an unsupported version (505)."""
    m = moat_factory(h2origin, admin=True)
    import socket
    s = socket.create_connection(("127.0.0.1", m.port), timeout=5)
    s.sendall(PREFACE)
    data = s.recv(4096)
    s.close()
    assert data.startswith(b"HTTP/1.1 505"), data


def test_tls_alpn_h2_curl_and_h2client(moat_factory, h2origin, pki):
    m = h2_moat(moat_factory, h2origin, pki=pki)
    with H2(m.tls_port, ctx=h2_context(pki.ca), server_hostname="shop.test") as c:
        assert c.alpn == "h2"
        r = c.get("/size/5000")
        assert r.status == 200 and bytes(r.body) == pattern(5000)
        assert r.header("strict-transport-security") is None  # not configured for the site
    out = subprocess.run(["curl", "-sS", "--http2", "--cacert", pki.ca, "--resolve",
                          f"shop.test:{m.tls_port}:127.0.0.1", "-o", "/dev/null", "-w",
                          "%{http_version} %{http_code} %{size_download}",
                          f"https://shop.test:{m.tls_port}/size/100000"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "2 200 100000", (out.stdout, out.stderr)
    # a client offering only http/1.1 still gets it
    out = subprocess.run(["curl", "-sS", "--http1.1", "--cacert", pki.ca, "--resolve",
                          f"shop.test:{m.tls_port}:127.0.0.1", "-o", "/dev/null", "-w",
                          "%{http_version} %{http_code}", f"https://shop.test:{m.tls_port}/"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "1.1 200", (out.stdout, out.stderr)
    lines = m.access_lines(3)
    assert all(l.get("tls") for l in lines)


@pytest.mark.parametrize("n", [0, 1024, 10 * MIB])
@pytest.mark.parametrize("with_cl", [True, False], ids=["content-length", "no-length"])
def test_post_bodies_both_ways(moat_factory, h2origin, n, with_cl):
    """The request body reaches the origin whole (with the declared length, or chunked when
    the client declared none) and comes back whole."""
    m = h2_moat(moat_factory, h2origin)
    body = pattern(n)
    hdrs = [("content-length", str(n))] if with_cl else []
    with H2(m.port) as c:
        r = c.get("/echo", method="POST", headers=hdrs, body=body, timeout=60)
        assert r.status == 200 and bytes(r.body) == body, (r.status, len(r.body))
    req = h2origin.requests[-1]
    assert req.method == "POST" and req.body == body
    if with_cl or n == 0:
        assert req.header("content-length") == str(n) or (n == 0 and not req.chunked)
    else:
        assert req.chunked


def test_upload_window_opens_as_the_origin_takes(moat_factory, origin_factory):
    """An origin that does not read holds the upload: moat takes no more than its windows
    (http2.stream_window), so the client's send blocks instead of moat buffering the body."""
    gate = threading.Event()

    def slow(req, origin):
        return response(200, b"got %d\n" % len(req.body))
    o = origin_factory(slow, "slow")
    m = h2_moat(moat_factory, o, http2={"stream_window": "16KiB", "connection_window": "64KiB"})
    with H2(m.port) as c:
        sid = c.request("POST", "/up", headers=[("content-length", str(4 * MIB))], end=False)
        c.send_body(sid, pattern(4 * MIB))
        r = c.response(sid, timeout=60)
        assert r.status == 200 and bytes(r.body) == b"got %d\n" % (4 * MIB)
    gate.set()


# --- the cache ------------------------------------------------------------------------------

def test_parallel_uploads_on_one_connection(moat_factory, h2origin):
    """Eight 1 MiB uploads interleaved on one connection (the client sends each as its windows
    allow), each echoed back whole to its own stream."""
    m = h2_moat(moat_factory, h2origin, http2={"stream_window": "16KiB"})
    bodies = [bytes([65 + i]) * MIB for i in range(8)]
    with H2(m.port) as c:
        sids = [c.request("POST", f"/echo/{i}", end=False) for i in range(8)]
        left = {sid: memoryview(b) for sid, b in zip(sids, bodies)}
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            sent = False
            for sid in list(left):
                win = min(c.conn.local_flow_control_window(sid), 16384)
                if win > 0:
                    c.conn.send_data(sid, left[sid][:win].tobytes())
                    left[sid] = left[sid][win:]
                    sent = True
                    if not left[sid]:
                        c.conn.end_stream(sid)
                        del left[sid]
            c.flush()
            if not sent:
                c.read_once(0.2)
        assert not left
        for sid, b in zip(sids, bodies):
            r = c.response(sid, timeout=30)
            assert r.status == 200 and bytes(r.body) == b


def test_client_resets_mid_response(moat_factory, h2origin):
    """Streams reset by the client while their bodies flow: the others complete; a cache fill
    whose stream was reset finishes without it (the next request is a hit)."""
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        sids = [c.request("GET", f"/size/{4 * MIB + i}") for i in range(4)]
        fill = c.request("GET", f"/c/fill/{4 * MIB}")
        c.pump(lambda: all(len(c.streams[s].body) > 100000 for s in sids[:2] + [fill]), 10)
        for s in sids[:2] + [fill]:
            c.conn.reset_stream(s, error_code=CANCEL)
        c.flush()
        for i, s in enumerate(sids[2:], 2):
            r = c.response(s, timeout=30)
            assert r.status == 200 and bytes(r.body) == pattern(4 * MIB + i)
        time.sleep(0.5)
        r = c.get(f"/c/fill/{4 * MIB}", timeout=30)
        assert r.status == 200 and bytes(r.body) == pattern(4 * MIB)
        assert "hit" in r.header("cache-status"), r.headers
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_resets_received_total") >= 3)
    assert metric(mt, "moat_http2_resets_received_total") >= 3  # the client may re-reset


def test_cache_filled_by_h1_served_by_h2_and_reverse(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with Client(m.port) as h1:
        r = h1get(h1, "/c/a/2000")
        assert r.status == 200
    with H2(m.port) as c:
        r = c.get("/c/a/2000", authority="shop.test")  # the key's host: as Host was
        assert r.status == 200 and bytes(r.body) == pattern(2000)
        assert "hit" in r.header("cache-status"), r.headers
        assert r.header("age") is not None
        r = c.get("/c/b/3000", authority="shop.test")
        assert r.status == 200 and "hit" not in r.header("cache-status")
    with Client(m.port) as h1:
        r = h1get(h1, "/c/b/3000")
        assert r.status == 200 and r.body == pattern(3000)
        assert "hit" in r.header("cache-status", ""), r.headers
    assert len([q for q in h2origin.requests if q.path.startswith("/c/")]) == 2


@pytest.mark.parametrize("bufs", [{}, {"stream_buffer": "8KiB", "connection_buffer": "16KiB"}],
                         ids=["default", "small-buffers"])
def test_large_cache_hits_in_sequence_and_parallel(moat_factory, h2origin, bufs):
    """1 MiB hits from the cache, one after the other and eight at once on one connection with
    the client's default 64 KiB windows: the cache serves in bites the stream's buffer takes,
    and each bite is driven by the room the client's WINDOW_UPDATEs make."""
    m = h2_moat(moat_factory, h2origin, http2=bufs)
    with H2(m.port) as c:
        assert bytes(c.get(f"/c/big/{MIB}").body) == pattern(MIB)
        for _ in range(3):
            r = c.get(f"/c/big/{MIB}", timeout=10)
            assert r.status == 200 and "hit" in r.header("cache-status")
            assert bytes(r.body) == pattern(MIB)
        sids = [c.request("GET", f"/c/big/{MIB}") for _ in range(8)]
        for sid in sids:
            r = c.response(sid, timeout=20)
            assert r.status == 200 and bytes(r.body) == pattern(MIB)
    assert len([q for q in h2origin.requests if q.path.startswith("/c/big")]) == 1


def test_early_hints_head_and_304_over_h2(moat_factory, origin_factory):
    """103 Early Hints arrive as an interim HEADERS before the answer; a HEAD hit and a 304
    from the cache carry no body (and no DATA frame the client would reject)."""
    o = origin_factory(early_hints_handler, "eh")
    m = h2_moat(moat_factory, o)
    with H2(m.port) as c:
        r = c.get("/page")
        assert r.status == 200 and r.body == b"final /page\n"
        assert r.interim and dict(r.interim[0])[":status"] == "103", r.interim
        assert "rel=preload" in dict(r.interim[0])["link"]
        r = c.get("/page", method="HEAD")
        assert r.status == 200 and r.body == b"" and "hit" in r.header("cache-status")
        assert r.header("content-length") == "12"
        etag = r.header("etag")
        lm = r.header("last-modified")
        cond = [("if-none-match", etag)] if etag else [("if-modified-since", lm or
                                                        r.header("date"))]
        r = c.get("/page", headers=cond)
        assert r.status == 304 and r.body == b"", r
        assert c.get("/page").status == 200
    assert len(o.requests) == 1


def test_100_streams_mixing_hits_misses_passes(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        c.get("/c/warm/500")
        sids = []
        for i in range(100):
            path = ("/c/warm/500", f"/c/miss{i}/700", f"/size/{300 + i}")[i % 3]
            sids.append((c.request("GET", path), path))
        for sid, path in sids:
            r = c.response(sid)
            assert r.status == 200, (path, r)
            if path.startswith("/c/warm"):
                assert bytes(r.body) == pattern(500) and "hit" in r.header("cache-status")
            elif path.startswith("/c/miss"):
                assert bytes(r.body) == pattern(700)
            else:
                assert bytes(r.body) == pattern(int(path[6:]))


def test_collapsed_forwarding_waiters_on_h2_streams(moat_factory, origin_factory):
    def slow(req, origin):
        return [0.5, response(200, b"x" * 5000, [("Cache-Control", "max-age=60")])]
    o = origin_factory(slow, "slow")
    m = h2_moat(moat_factory, o)
    with H2(m.port) as c:
        sids = [c.request("GET", "/same") for _ in range(10)]
        for sid in sids:
            r = c.response(sid)
            assert r.status == 200 and r.body == b"x" * 5000
    assert len(o.requests) == 1


def test_h2load_over_tls(moat_factory, h2origin, pki):
    if not shutil.which("h2load"):
        pytest.fail("h2load missing: scripts/install-deps installs nghttp2-client")
    m = h2_moat(moat_factory, h2origin, pki=pki)
    subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{m.port}/c/x/1024"],
                   timeout=10)
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "100",
                          f"https://127.0.0.1:{m.tls_port}/c/x/1024"],
                         capture_output=True, text=True, timeout=60)
    assert "2000 succeeded" in out.stdout, out.stdout + out.stderr
    assert "2000 2xx" in out.stdout, out.stdout
    assert "h2" in out.stdout  # "Application protocol: h2"


def test_nghttp_multiplexed_gets(moat_factory, h2origin):
    if not shutil.which("nghttp"):
        pytest.fail("nghttp missing: scripts/install-deps installs nghttp2-client")
    m = h2_moat(moat_factory, h2origin)
    out = subprocess.run(["nghttp", "-ns", f"http://127.0.0.1:{m.port}/size/1000",
                          f"http://127.0.0.1:{m.port}/size/2000",
                          f"http://127.0.0.1:{m.port}/c/n/3000"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(" 200 ") + out.stdout.count("200") >= 3, out.stdout


# --- translation ----------------------------------------------------------------------------

def test_translation_to_the_origin(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        r = c.get("/hdrs?q=1", headers=[("cookie", "a=1"), ("cookie", "b=2"),
                                        ("x-custom", "v"), ("te", "trailers")],
                  authority="shop.example:8443")
        assert r.status == 200
    seen = json.loads(bytes(r.body))
    h = {k.lower(): v for k, v in seen["headers"]}
    assert seen["method"] == "GET" and seen["target"] == "/hdrs?q=1"
    assert h["host"] == "shop.example:8443"
    assert [v for k, v in seen["headers"] if k.lower() == "cookie"] == ["a=1; b=2"]
    assert h["x-custom"] == "v"
    assert "te" not in h and "connection" not in h or h.get("connection") == "keep-alive"
    assert h["x-forwarded-proto"] == "http"


def test_response_hop_by_hop_fields_stripped(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        r = c.get("/hop")
        assert r.status == 200 and r.body == b"hop\n"
        names = {k.lower() for k, _ in r.headers}
        assert not names & {"connection", "keep-alive", "proxy-connection", "x-private",
                            "transfer-encoding"}, names
        assert r.header("x-kept") == "yes"


def test_response_trailers_forwarded(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        r = c.get("/trailers", headers=[("te", "trailers")])
        assert r.status == 200 and r.body == b"hello"
        assert r.trailers and ("x-sum", "42") in r.trailers, r


def test_request_trailers_forwarded(moat_factory, h2origin):
    """A request body without a length goes to the origin chunked, its trailer section with it
    (filtered as over HTTP/1.1: framing fields never pass)."""
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        sid = c.request("POST", "/echo", end=False)
        c.send_body(sid, b"abc" * 1000, end=False)
        c.conn.send_headers(sid, [("x-checksum", "c0ffee"), ("expect", "5-nothing")],
                            end_stream=True)
        c.flush()
        r = c.response(sid)
        assert r.status == 200 and bytes(r.body) == b"abc" * 1000
    req = h2origin.requests[-1]
    assert req.chunked and req.body == b"abc" * 1000
    tail = req.raw.split(b"\r\n0\r\n", 1)[1].lower()
    assert b"x-checksum: c0ffee\r\n" in tail and b"expect" not in tail, req.raw[-200:]


@pytest.mark.parametrize("bad", [
    [("connection", "close")],
    [("keep-alive", "timeout=5")],
    [("proxy-connection", "keep-alive")],
    [("transfer-encoding", "chunked")],
    [("upgrade", "websocket")],
    [("te", "gzip")],
    [("X-Upper", "1")],
    [("host", "other.example")],
], ids=["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
        "te-gzip", "uppercase", "host-mismatch"])
def test_malformed_stream_reset_other_stream_served(moat_factory, h2origin, bad):
    """A malformed request is answered with RST_STREAM PROTOCOL_ERROR on its stream only: the
    connection's other stream, opened before and still in flight, completes."""
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port, validate=False) as c:
        good = c.request("GET", "/delay/300")
        badsid = c.request("GET", "/never", headers=bad, authority=c.authority)
        r = c.response(badsid)
        assert r.reset == PROTOCOL_ERROR, r
        g = c.response(good)
        assert g.status == 200 and g.body.startswith(b"slow"), g
        assert c.goaway is None
        assert c.get("/size/10").status == 200
    assert not any(q.path == "/never" for q in h2origin.requests)
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_resets_sent_total", reason="protocol") >= 1)
    assert metric(mt, "moat_http2_resets_sent_total", reason="protocol") >= 1


def test_content_length_mismatch_resets_stream(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port, validate=False) as c:
        sid = c.request("POST", "/echo", headers=[("content-length", "10")], end=False)
        c.conn.send_data(sid, b"12345", end_stream=True)
        c.flush()
        r = c.response(sid)
        assert r.reset == PROTOCOL_ERROR, r
        assert c.get("/size/3").status == 200


def test_connect_refused_cleanly(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port, validate=False) as c:
        sid = c.conn.get_next_available_stream_id()
        from h2client import Stream
        c.streams[sid] = Stream(sid)
        c.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "example.com:443")],
                            end_stream=False)
        c.flush()
        r = c.response(sid)
        assert r.status == 405, r
        assert c.get("/size/3").status == 200


def test_header_list_too_large_431(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin, http2={"max_header_list": "4KiB"})
    with H2(m.port) as c:
        r = c.get("/size/3", headers=[("x-big", "a" * 3000), ("x-big2", "b" * 3000)])
        assert r.status == 431, r
        assert c.get("/size/3").status == 200
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_header_lists_too_large_total") >= 1)
    assert metric(mt, "moat_http2_header_lists_too_large_total") == 1


# --- flow control ---------------------------------------------------------------------------

def test_slow_reader_gets_everything_with_bounded_memory(moat_factory, h2origin):
    """Four 10 MiB responses to a client that does not open its windows: moat holds at most
    http2.stream_buffer per stream (and the origin's socket buffers), not the bodies; once the
    client reads, every byte arrives in order."""
    m = h2_moat(moat_factory, h2origin, http2={"stream_buffer": "64KiB"})
    with H2(m.port, auto_ack=False) as c:
        sids = [c.request("GET", f"/size/{10 * MIB}") for _ in range(4)]
        c.pump(lambda: False, timeout=1.5)  # moat fills what it may, then stalls
        rss0 = m.rss_kib()
        c.pump(lambda: False, timeout=1.0)
        rss1 = m.rss_kib()
        got = sum(len(c.streams[s].body) for s in sids)
        assert got <= 65535, got  # the connection window: nothing more may come
        assert rss1 - rss0 < 4096, (rss0, rss1)
        c.open_windows(sids)
        for s in sids:
            r = c.response(s, timeout=60)
            assert r.status == 200 and bytes(r.body) == pattern(10 * MIB)


def test_stall_timeout_closes_slow_reader(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin, http2={"stall_timeout": "1s"})
    with H2(m.port, auto_ack=False) as c:
        c.request("GET", f"/size/{MIB}")
        t0 = time.monotonic()
        assert c.wait_closed(10)
        assert 0.8 < time.monotonic() - t0 < 6
    with H2(m.port) as c2:
        assert c2.get("/size/5").status == 200
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_goaways_total", reason="stall") >= 1)
    assert metric(mt, "moat_http2_goaways_total", reason="stall") == 1


def test_idle_timeout_goaway(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin, http2={"idle_timeout": "1s"})
    with H2(m.port) as c:
        assert c.get("/size/5").status == 200
        assert c.pump(lambda: c.goaway is not None, 5)
        assert c.goaway.error_code == 0
        assert c.wait_closed(5)
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_goaways_total", reason="idle") >= 1)
    assert metric(mt, "moat_http2_goaways_total", reason="idle") == 1


# --- floods: each answered while another connection is served -------------------------------

def probe(m):
    with H2(m.port) as p:
        assert p.get("/size/100").status == 200


def flood_answered(m, c, reason, need_goaway=False):
    """<c> flooded: it got GOAWAY ENHANCE_YOUR_CALM (or was closed after it), a new
    connection is served, and the GOAWAY is counted once under <reason>."""
    assert c.pump(lambda: c.goaway is not None or c.closed, 5)
    if need_goaway or c.goaway is not None:
        assert c.goaway is not None and c.goaway.error_code == ENHANCE_YOUR_CALM, c.goaway
    probe(m)
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_goaways_total", reason=reason) >= 1)
    assert metric(mt, "moat_http2_goaways_total", reason=reason) == 1


def test_rapid_reset_goaway(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin, http2={"max_resets": 50})
    with H2(m.port) as other:
        slow = other.request("GET", "/delay/1500")
        with H2(m.port) as c:
            for i in range(200):
                if c.goaway is not None or c.closed:
                    break
                sid = c.request("GET", f"/delay/1000?{i}")
                c.conn.reset_stream(sid, error_code=CANCEL)
                c.flush()
                if i % 20 == 0:
                    try:
                        c.read_once(0.01)
                    except Exception:
                        break
            c.pump(lambda: c.goaway is not None or c.closed, 5)
            assert c.goaway is not None and c.goaway.error_code == ENHANCE_YOUR_CALM, c.goaway
        probe(m)
        r = other.response(slow)
        assert r.status == 200 and r.body.startswith(b"slow")
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_goaways_total", reason="rapid_reset") >= 1)
    assert metric(mt, "moat_http2_goaways_total", reason="rapid_reset") == 1
    assert metric(mt, "moat_http2_resets_received_total") >= 50


def test_concurrent_streams_limit(moat_factory, origin_factory):
    """SETTINGS_MAX_CONCURRENT_STREAMS is http2.max_concurrent_streams; a stream beyond it
    (sent before the client saw the SETTINGS) is refused, never forwarded."""
    def slow(req, origin):
        return [0.5, response(200, b"ok\n")]
    o = origin_factory(slow, "slow")
    m = h2_moat(moat_factory, o, http2={"max_concurrent_streams": 5})
    with H2(m.port) as c:
        sids = [c.request("GET", f"/s{i}") for i in range(8)]  # before moat's SETTINGS
        assert c.pump(lambda: all(c.done(s) for s in sids), 10)
        assert c.remote_settings.get(3) == 5
        ok = [s for s in sids if c.streams[s].status == 200]
        refused = [s for s in sids if c.streams[s].reset == REFUSED_STREAM]
        assert len(ok) == 5 and len(refused) == 3, [c.streams[s] for s in sids]
        assert c.get("/again").status == 200
    assert len(o.requests) == 6
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_resets_sent_total", reason="refused") >= 3)
    assert metric(mt, "moat_http2_resets_sent_total", reason="refused") == 3


def test_continuation_flood_goaway(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        import hpack
        c.pump(lambda: 3 in c.remote_settings, 3)
        c.pump(lambda: False, 0.2)  # the SETTINGS ack goes before the block, not inside it
        block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                        (":authority", c.authority), (":path", "/x")])
        c.raw(frame(1, 0x0, 1, block))  # HEADERS without END_HEADERS
        try:
            for _ in range(2000):
                c.raw(frame(9, 0x0, 1, hpack.Encoder().encode([("x-a", "b" * 10)])))
        except OSError:
            pass
        flood_answered(m, c, "flood", need_goaway=True)
    assert not any(q.path == "/x" for q in h2origin.requests)


def test_unfinished_header_block_times_out(moat_factory, h2origin):
    """A header block that never ends (HEADERS without END_HEADERS, then nothing: slowloris
    over HTTP/2) is cut after timeouts.client_header, while other connections are served."""
    m = h2_moat(moat_factory, h2origin, timeouts={"client_header": "1s"})
    with H2(m.port) as c:
        import hpack
        c.pump(lambda: 3 in c.remote_settings, 3)  # SETTINGS both ways (and acked) first:
        c.pump(lambda: False, 0.2)                   # nothing may come inside the block
        block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"),
                                        (":authority", c.authority), (":path", "/x")])
        c.raw(frame(1, 0x0, 1, block))
        probe(m)
        t0 = time.monotonic()
        assert c.pump(lambda: c.goaway is not None or c.closed, 6)
        assert 0.8 < time.monotonic() - t0 < 5, (c.goaway, c.closed, m.metrics())
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_goaways_total", reason="header_timeout") >= 1)
    assert metric(mt, "moat_http2_goaways_total", reason="header_timeout") == 1


def test_empty_data_flood_goaway(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin, http2={"max_empty_frames": 20})
    with H2(m.port) as c:
        sid = c.request("POST", "/echo", end=False)
        try:
            for _ in range(100):
                c.raw(frame(0, 0, sid, b""))
        except OSError:
            pass
        flood_answered(m, c, "empty_data", need_goaway=True)


@pytest.mark.parametrize("kind", ["ping", "settings", "priority", "window_update"])
def test_control_frame_flood_goaway(moat_factory, h2origin, kind):
    m = h2_moat(moat_factory, h2origin, http2={"max_control_frames": 100})
    with H2(m.port) as c:
        burst = bytearray()
        for i in range(400):
            if kind == "ping":
                burst += frame(6, 0, 0, i.to_bytes(8, "big"))
            elif kind == "settings":
                burst += frame(4, 0, 0, b"")
            elif kind == "priority":
                burst += frame(2, 0, 2 * i + 1, b"\x00\x00\x00\x00\x10")
            else:
                burst += frame(8, 0, 0, b"\x00\x00\x00\x01")
        try:
            c.raw(bytes(burst))
        except OSError:
            pass
        flood_answered(m, c, "control_flood")


def test_ping_flood_without_reading_bounded(moat_factory, h2origin):
    """A client that sends PINGs and never reads the acks: once the socket buffers are full,
    nghttp2's max_outbound_ack ends the connection (GOAWAY, counted as a flood) instead of
    queueing acks without bound."""
    m = h2_moat(moat_factory, h2origin, http2={"max_outbound_ack": 50,
                                               "max_control_frames": 10000000})
    burst = b"".join(frame(6, 0, 0, i.to_bytes(8, "big")) for i in range(20000))
    flooded = lambda mt: metric(mt, "moat_http2_goaways_total", reason="flood") >= 1  # noqa
    with H2(m.port) as c:
        c.sock.settimeout(2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not flooded(m.metrics()):
            try:
                c.raw(burst)  # 340 KB of PINGs; the loopback buffers hold a few MB
            except OSError:
                break  # moat closed it, or stopped reading: the metric says which
    probe(m)
    mt = h2m(m, flooded)
    assert flooded(mt)


# --- drain, reload, metrics -----------------------------------------------------------------

def test_drain_goaway_lets_stream_in_flight_finish(moat_factory, h2origin):
    """SIGTERM: GOAWAY (NO_ERROR, last stream = the one in flight) at once, the stream in
    flight completes, then moat exits. (nghttp here: python3-h2 closes its side on GOAWAY.)"""
    m = h2_moat(moat_factory, h2origin)
    n = subprocess.Popen(["nghttp", "-v", f"http://127.0.0.1:{m.port}/delay/800"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    m.signal(signal.SIGTERM)
    out = n.communicate(timeout=20)[0]
    assert n.returncode == 0, out
    goaway = out.index("recv GOAWAY frame")
    status = out.index(":status: 200")
    assert goaway < status, out  # the GOAWAY came first, the answer after it
    assert "error_code=NO_ERROR" in out[goaway:goaway + 300], out
    assert "slow o1" in out
    assert m.proc.wait(10) == 0


def test_reload_with_streams_in_flight(moat_factory, h2origin):
    m = h2_moat(moat_factory, h2origin)
    with H2(m.port) as c:
        sids = [c.request("GET", "/delay/600") for _ in range(3)]
        time.sleep(0.2)
        m.reload(m.config)
        for s in sids:
            r = c.response(s)
            assert r.status == 200 and r.body.startswith(b"slow")
        assert c.get("/size/7").status == 200 and c.goaway is None
    assert m.alive()


def test_metrics_by_protocol(moat_factory, h2origin, pki):
    m = h2_moat(moat_factory, h2origin, pki=pki)
    with H2(m.port) as c, H2(m.tls_port, ctx=h2_context(pki.ca)) as t:
        assert c.get("/size/1").status == 200
        assert t.get("/size/1").status == 200
        mt = m.metrics()
        assert metric(mt, "moat_http2_connections_active") == 2
        assert metric(mt, "moat_http2_streams_total") == 2
    mt = h2m(m, lambda mt: metric(mt, "moat_http2_connections_active") == 0)
    assert metric(mt, "moat_http2_connections_active") == 0
    assert metric(mt, "moat_http2_connections_total") == 2
    assert metric(mt, "moat_http2_streams_active") == 0


def test_shield_connections_per_ip_counts_h2(moat_factory, h2origin):
    """An HTTP/2 connection keeps the place in shield.connections.per_ip its HTTP/1 start took
    (held while it is open, given back when it closes)."""
    m = h2_moat(moat_factory, h2origin, shield={"connections": {"per_ip": 2}})
    a, b = H2(m.port), H2(m.port)
    assert a.get("/size/1").status == 200 and b.get("/size/1").status == 200
    with H2(m.port) as extra:
        assert extra.wait_closed(5)  # refused at accept: a third connection from 127.0.0.1
    assert metric(m.metrics(), "moat_shield_connections_refused_total") == 1
    a.__exit__()
    time.sleep(0.3)
    with H2(m.port) as c:
        assert c.get("/size/1").status == 200  # the slot came back with the close
    b.__exit__()


def test_h2c_and_tls_config_refused(moat_factory, h2origin, tmp_path):
    from conftest import MOAT_BIN
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"listen: [{{ addr: '127.0.0.1:{free_port()}', tls: true, h2c: true }}]\n"
                   "sites: [{ hosts: ['*'], pool: p }]\npools: { p: { origins: ['127.0.0.1:1'] } }\n")
    out = subprocess.run([MOAT_BIN, "-t", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode != 0 and "h2c is for plain listeners" in out.stderr + out.stdout, out
    cfg.write_text("http2: { max_concurrent_streams: 0 }\n"
                   "sites: [{ hosts: ['*'], pool: p }]\npools: { p: { origins: ['127.0.0.1:1'] } }\n")
    out = subprocess.run([MOAT_BIN, "-t", "-c", str(cfg)], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode != 0 and "bad.yaml:1:" in out.stderr + out.stdout, out
