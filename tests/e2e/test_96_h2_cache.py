"""test_96_h2_cache: the cache across protocols (src/proxy/h2conn.c with src/proxy/cache.c,
cache_serve.c; docs/http2.md): an object filled by an HTTP/1.1 client is a hit over HTTP/2 and
the reverse, over h2c and over TLS (ALPN h2), small and larger than a stream's buffer;
collapsed forwarding with waiters on HTTP/2 streams of several connections and an HTTP/1.1
waiter behind one slow origin request; 100 concurrent streams on one TLS connection mixing
hits, misses and passes, counted at the origin; curl --http2 (ALPN) and
--http2-prior-knowledge (h2c) as the demo. Each checks Cache-Status and counts the requests
the origin saw."""

import subprocess
import threading
import time

import pytest

from conftest import metric
from h2client import H2, h2_context
from origins import pattern, response
from rawhttp import Client

KIB = 1024


def handler(req, origin):
    """/c/NAME/N: N bytes, cacheable for a minute; /slow/NAME/N: the same after 1 s;
    /slownostore/NAME/N: N bytes after 1 s, Cache-Control: no-store;
    /pass/big/N: N bytes, /pass/...: a short answer (a rule bypasses the cache for both);
    anything else: 404."""
    p = req.path
    parts = p.split("/")
    cc = [("Cache-Control", "public, max-age=60"), ("X-Origin", origin.name)]
    if p.startswith("/c/"):
        return response(200, pattern(int(parts[-1])), cc)
    if p.startswith("/slow/"):
        return [1.0, response(200, pattern(int(parts[-1])), cc)]
    if p.startswith("/slownostore/"):
        return [1.0, response(200, pattern(int(parts[-1])), [("Cache-Control", "no-store")])]
    if p.startswith("/pass/big/"):
        return response(200, pattern(int(parts[-1])), cc)
    if p.startswith("/pass/"):
        return response(200, f"pass {p}\n", cc)
    return response(404, b"no\n")


def moat_with(moat_factory, origin, pki=None, **over):
    """A moat with an h2c plain listener (and a TLS one with <pki>), admin on, and a rule
    that bypasses the cache for /pass/*."""
    over.setdefault("sites", [{"hosts": ["*"], "pool": "main",
                               "rules": [{"match": {"path": "/pass/*"}, "cache": "bypass"}]}])
    if pki is not None:
        cfg = moat_factory.tls_config([origin], pki, **over)
    else:
        cfg = moat_factory.config([origin], admin=True, **over)
    cfg["listen"][0] = {"addr": cfg["listen"][0], "h2c": True}
    return moat_factory(config=cfg)


def origin_count(origin, prefix):
    return len([q for q in origin.requests if q.path.startswith(prefix)])


def is_hit(cache_status):
    return cache_status is not None and "; hit" in cache_status


# --- HTTP/1.1 fills, HTTP/2 hits, and the reverse --------------------------------------------

class H1:
    """One HTTP/1.1 keep-alive client on the plain port or (with <https>) over TLS; get()
    returns (status, headers dict with lowercase names, body)."""

    def __init__(self, m, https=None):
        self.m, self.https = m, https

    def get(self, path, method="GET"):
        if self.https is not None:
            r = self.https.request(method, self.m.https_url(path), timeout=20)
            return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content
        with Client(self.m.port, timeout=20) as c:
            c.send(f"{method} {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
            r = c.read_response(method=method)
            return r.status, {k.lower(): r.header(k) for k in ("cache-status", "age",
                                                                "content-length")}, r.body


@pytest.mark.parametrize("size", [2000, 300 * KIB], ids=["2KB", "300KiB"])
@pytest.mark.parametrize("via", ["h2c", "tls"])
def test_h1_fill_h2_hit_and_reverse(moat_factory, origin_factory, pki, https, via, size):
    o = origin_factory(handler, "o1")
    m = moat_with(moat_factory, o, pki=pki if via == "tls" else None)

    def h2conn():
        if via == "tls":
            c = H2(m.tls_port, ctx=h2_context(pki.ca), server_hostname="shop.test")
            assert c.alpn == "h2"
            return c
        return H2(m.port)

    h1 = H1(m, https if via == "tls" else None)
    # the key's host is the Host as sent: requests sends the port on TLS, the raw client not
    auth = f"shop.test:{m.tls_port}" if via == "tls" else "shop.test"
    body = pattern(size)
    # HTTP/1.1 fills, HTTP/2 hits (GET and HEAD)
    st, hd, b = h1.get(f"/c/one/{size}")
    assert st == 200 and b == body and not is_hit(hd["cache-status"]), hd
    with h2conn() as c:
        r = c.get(f"/c/one/{size}", authority=auth)
        assert r.status == 200 and bytes(r.body) == body, (r.status, len(r.body))
        assert is_hit(r.header("cache-status")), r.headers
        assert r.header("age") is not None and r.header("content-length") == str(size)
        r = c.get(f"/c/one/{size}", method="HEAD", authority=auth)
        assert r.status == 200 and r.body == b"" and is_hit(r.header("cache-status"))
        assert r.header("content-length") == str(size)
        # HTTP/2 fills ...
        r = c.get(f"/c/two/{size}", authority=auth)
        assert r.status == 200 and bytes(r.body) == body
        assert "fwd=uri-miss" in r.header("cache-status"), r.headers
    # ... HTTP/1.1 hits, and so does another HTTP/2 connection
    st, hd, b = h1.get(f"/c/two/{size}")
    assert st == 200 and b == body and is_hit(hd["cache-status"]), hd
    with h2conn() as c:
        r = c.get(f"/c/two/{size}", authority=auth)
        assert r.status == 200 and bytes(r.body) == body and is_hit(r.header("cache-status"))
    assert origin_count(o, "/c/one/") == 1 and origin_count(o, "/c/two/") == 1, \
        [q.path for q in o.requests]
    mt = m.metrics(lambda mt: metric(mt, "moat_cache_hits_total") >= 4)
    assert metric(mt, "moat_cache_hits_total") == 4


# --- collapsed forwarding with waiters on HTTP/2 streams ---------------------------------------

@pytest.mark.parametrize("size", [5000, 300 * KIB], ids=["5KB", "300KiB"])
def test_collapsed_forwarding_h2_streams_and_h1_waiter(moat_factory, origin_factory, size):
    """One cold URL behind an origin that takes 1 s: 3 HTTP/2 connections x 8 streams (one
    connection with a 16 KiB window, so its waiters are held by flow control) and two
    HTTP/1.1 requests at once. The origin sees one request; every stream gets the whole,
    identical body; all but the writer are collapsed waiters."""
    o = origin_factory(handler, "slow")
    m = moat_with(moat_factory, o)
    path = f"/slow/x/{size}"
    body = pattern(size)
    results, errors = [], []
    lock = threading.Lock()
    go = threading.Barrier(5)

    def h2_client(window):
        try:
            with H2(m.port, window=window, timeout=20) as c:
                go.wait()
                sids = [c.request("GET", path, authority="shop.test") for _ in range(8)]
                for sid in sids:
                    r = c.response(sid, timeout=20)
                    with lock:
                        results.append(("h2", r.status, bytes(r.body), r.header("cache-status"),
                                        r.reset))
        except Exception as e:  # reported below, with the others
            errors.append(repr(e))

    def h1_client():
        try:
            with Client(m.port, timeout=20) as c:
                go.wait()
                c.send(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
                r = c.read_response()
                with lock:
                    results.append(("h1", r.status, r.body, r.header("cache-status"), None))
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=h2_client, args=(w,)) for w in (None, None, 16384)]
    threads += [threading.Thread(target=h1_client) for _ in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors
    assert len(results) == 26, len(results)
    for proto, status, b, cs, reset in results:
        assert status == 200 and reset is None, (proto, status, cs, reset)
        assert b == body, (proto, len(b), cs)
    assert origin_count(o, "/slow/") == 1, [q.path for q in o.requests]
    statuses = [cs for _, _, _, cs, _ in results]
    writers = [cs for cs in statuses if "collapsed" not in cs and not is_hit(cs)]
    assert len(writers) == 1, statuses
    assert "fwd=uri-miss" in writers[0], statuses
    # every request went out within the origin's second, so none came late enough to hit
    assert time.monotonic() - t0 < 15
    assert sum(1 for cs in statuses if "collapsed" in cs) == 25, statuses
    mt = m.metrics(lambda mt: metric(mt, "moat_cache_collapsed_total") >= 25)
    assert metric(mt, "moat_cache_collapsed_total") == 25
    # and the object is now a hit on HTTP/2
    with H2(m.port) as c:
        r = c.get(path, authority="shop.test")
        assert bytes(r.body) == body and is_hit(r.header("cache-status"))
    assert origin_count(o, "/slow/") == 1


# --- 100 streams: hits, misses and passes on one TLS connection ------------------------------

def test_100_streams_hits_misses_passes_counted(moat_factory, origin_factory, pki):
    o = origin_factory(handler, "o1")
    m = moat_with(moat_factory, o, pki=pki)
    warm = ["/c/warm/500", f"/c/warmbig/{100 * KIB}"]
    with H2(m.tls_port, ctx=h2_context(pki.ca), server_hostname="shop.test") as c:
        for p in warm:
            assert c.get(p).status == 200
        assert len(o.requests) == 2

        def batch(rnd):
            paths = []
            for i in range(100):
                kind = ("hit", "miss", "pass")[i % 3]
                if kind == "hit":
                    paths.append((kind, warm[i % 2]))
                elif kind == "miss":
                    paths.append((kind, f"/c/miss{i}/{700 + i}"))
                else:
                    paths.append((kind, f"/pass/{rnd}/{i}"))
            sids = [(c.request("GET", p), kind, p) for kind, p in paths]
            out = []
            for sid, kind, p in sids:
                r = c.response(sid, timeout=30)
                assert r.status == 200 and r.reset is None, (p, r)
                want = f"pass {p}\n".encode() if kind == "pass" else \
                    pattern(int(p.rsplit("/", 1)[1]))
                assert bytes(r.body) == want, (p, len(r.body))
                out.append((kind, r.header("cache-status")))
            return out

        first = batch(1)
        for kind, cs in first:
            if kind == "hit":
                assert is_hit(cs), cs
            elif kind == "miss":
                assert "fwd=uri-miss" in cs, cs
            else:
                assert "fwd=bypass" in cs, cs
        n_hit = sum(1 for k, _ in first if k == "hit")
        n_miss = sum(1 for k, _ in first if k == "miss")
        n_pass = sum(1 for k, _ in first if k == "pass")
        assert (n_hit, n_miss, n_pass) == (34, 33, 33)
        assert len(o.requests) == 2 + n_miss + n_pass, len(o.requests)
        # the second round: the misses are hits now, the passes go to the origin again
        second = batch(2)
        for kind, cs in second:
            assert is_hit(cs) if kind != "pass" else "fwd=bypass" in cs, (kind, cs)
        assert len(o.requests) == 2 + n_miss + 2 * n_pass, len(o.requests)
        assert c.goaway is None and not c.closed


# --- curl as the demo -----------------------------------------------------------------------

def curl(*args):
    out = subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out


def test_curl_http2_demo(moat_factory, origin_factory, pki, tmp_path):
    """curl --http2 over TLS negotiates h2 by ALPN; curl --http2-prior-knowledge speaks h2c
    to a plain listener with h2c: true; curl --http1.1 fills what curl over h2 then hits."""
    o = origin_factory(handler, "o1")
    m = moat_with(moat_factory, o, pki=pki)
    resolve = ["--cacert", pki.ca, "--resolve", f"shop.test:{m.tls_port}:127.0.0.1"]
    url = f"https://shop.test:{m.tls_port}/c/demo/{64 * KIB}"
    fmt = "%{http_version} %{http_code} %{size_download}\n"
    # HTTP/1.1 over TLS fills the object
    h = tmp_path / "h1.txt"
    out = curl("--http1.1", *resolve, "-o", "/dev/null", "-D", str(h), "-w", fmt, url)
    assert out.stdout == f"1.1 200 {64 * KIB}\n", out.stdout
    assert "fwd=uri-miss" in h.read_text().lower()
    # curl --http2: ALPN h2, the hit
    h = tmp_path / "h2.txt"
    out = curl("--http2", "-v", *resolve, "-o", "/dev/null", "-D", str(h), "-w", fmt, url)
    assert out.stdout == f"2 200 {64 * KIB}\n", out.stdout
    assert "ALPN: server accepted h2" in out.stderr, out.stderr
    heads = h.read_text().lower()
    assert heads.startswith("http/2 200") and "cache-status: moat; hit" in heads, heads
    # curl --http2-prior-knowledge on the plain h2c listener, twice: the miss, then the hit.
    # (One curl per request: Debian's curl 7.88.1 fails to reuse a prior-knowledge
    # connection for a second URL, "Error in the HTTP2 framing layer", against nginx too:
    # curl issue 10634, fixed after 7.88.1.)
    plain = f"http://shop.test:{m.port}/c/demo2/3000"
    heads = ""
    for i in range(2):
        h = tmp_path / f"h2c{i}.txt"
        out = curl("--http2-prior-knowledge", "--resolve", f"shop.test:{m.port}:127.0.0.1",
                   "-o", "/dev/null", "-D", str(h), "-w", fmt, plain)
        assert out.stdout == "2 200 3000\n", out.stdout
        heads += h.read_text().lower()
    assert heads.count("http/2 200") == 2, heads
    assert "fwd=uri-miss" in heads and "cache-status: moat; hit" in heads, heads
    assert origin_count(o, "/c/demo/") == 1 and origin_count(o, "/c/demo2/") == 1
    mt = m.metrics(lambda mt: metric(mt, "moat_http2_streams_total") >= 3)
    assert metric(mt, "moat_http2_connections_total") == 3
    assert metric(mt, "moat_http2_streams_total") == 3


@pytest.mark.parametrize("writer_via", ["h2", "h1"])
def test_collapsed_waiters_reset_and_writer_reset(moat_factory, origin_factory, writer_via):
    """Streams leave while collapsed: a waiter stream reset by its client, a whole HTTP/2
    connection of waiters closed, and the writer's client gone before the origin answers (its
    HTTP/2 stream reset, or its HTTP/1.1 connection closed). The waiters that stay (HTTP/2 GET
    and HEAD, HTTP/1.1) still get the whole body from the one origin request: the fill goes on
    without its client. (Before the fix an HTTP/2 writer's reset, seen at once, aborted the
    object and sent each of the 7 waiters to the origin itself.)"""
    o = origin_factory(handler, "slow")
    m = moat_with(moat_factory, o, workers=1)
    size = 200 * KIB
    path = f"/slow/w/{size}"
    body = pattern(size)
    with H2(m.port) as w, H2(m.port) as a, H2(m.port) as gone, Client(m.port, timeout=20) as h1, \
            Client(m.port, timeout=20) as h1w:
        if writer_via == "h2":
            writer = w.request("GET", path, authority="shop.test")
        else:
            h1w.send(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
        assert o.wait_requests(1, timeout=5)
        keep = [a.request("GET", path, authority="shop.test") for _ in range(4)]
        head = a.request("HEAD", path, authority="shop.test")
        drop = [a.request("GET", path, authority="shop.test") for _ in range(3)]
        for _ in range(5):
            gone.request("GET", path, authority="shop.test")
        h1.send(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
        time.sleep(0.2)
        for sid in drop:
            a.conn.reset_stream(sid, 8)  # CANCEL
        a.flush()
        gone.sock.close()
        if writer_via == "h2":
            w.conn.reset_stream(writer, 8)
            w.flush()
        else:
            h1w.close()
        for sid in keep:
            r = a.response(sid, timeout=20)
            assert r.status == 200 and r.reset is None and bytes(r.body) == body, r
        r = a.response(head, timeout=20)
        assert r.status == 200 and r.body == b"" and r.header("content-length") == str(size), r
        r1 = h1.read_response()
        assert r1.status == 200 and r1.body == body, (r1.status, len(r1.body))
        # the connections are still good for more
        r = w.get(path, authority="shop.test")
        assert r.status == 200 and bytes(r.body) == body
    assert m.alive()
    assert origin_count(o, "/slow/") == 1, [q.path for q in o.requests]
    if writer_via == "h2":  # an HTTP/1.1 client's close is seen at the first write: a hit
        mt = m.metrics(lambda mt: metric(mt, "moat_cache_detached_fetches_total") >= 1)
        assert metric(mt, "moat_cache_detached_fetches_total") == 1
    with H2(m.port) as c:
        r = c.get(path, authority="shop.test")
        assert bytes(r.body) == body and is_hit(r.header("cache-status")), r.headers


def test_writer_reset_before_an_uncacheable_head(moat_factory, origin_factory):
    """The writer's stream is reset before the origin answers, and the answer says no-store:
    the orphaned fill ends at the head (nobody wants its body), and the waiters, told the
    object is not stored, each fetch their own answer and get it whole."""
    o = origin_factory(handler, "slow")
    m = moat_with(moat_factory, o, workers=1)
    path = f"/slownostore/p/{100 * KIB}"
    body = pattern(100 * KIB)
    with H2(m.port) as w, H2(m.port) as a:
        writer = w.request("GET", path, authority="shop.test")
        assert o.wait_requests(1, timeout=5)
        sids = [a.request("GET", path, authority="shop.test") for _ in range(3)]
        time.sleep(0.2)
        w.conn.reset_stream(writer, 8)
        w.flush()
        for sid in sids:
            r = a.response(sid, timeout=20)
            assert r.status == 200 and r.reset is None and bytes(r.body) == body, r
        r = w.get(path, authority="shop.test")
        assert r.status == 200 and bytes(r.body) == body
    # the writer's request, then each waiter's own (at least one; collapsed again or not),
    # then the last GET
    assert 3 <= origin_count(o, "/slownostore/") <= 5, [q.path for q in o.requests]
    assert m.alive()
    mt = m.metrics(lambda mt: metric(mt, "moat_cache_detached_fetches_total") >= 1)
    assert metric(mt, "moat_cache_detached_fetches_total") == 1
    lines = m.access_lines(5)
    gone = [l for l in lines if l.get("error") == "client_gone"]
    assert len(gone) == 1, lines


def test_stalled_writer_fill_fails_waiters_reset_not_short(moat_factory, origin_factory):
    """The writer's client opens no window, so the origin is not read further and the pool's
    idle_timeout (2 s here) fails the fill: the waiter's stream, which has the full
    content-length, is reset (INTERNAL_ERROR) with part of the body, never ended short; the
    connections stay usable and moat stays up. (The limitation docs/http2.md names.)"""
    o = origin_factory(handler, "slow")
    m = moat_with(moat_factory, o, workers=1, pools={"main": {"idle_timeout": "2s"}})
    size = 2 * 1024 * KIB
    path = f"/slow/stall/{size}"
    with H2(m.port, auto_ack=False, window=16384) as w, H2(m.port) as a:
        w.request("GET", path, authority="shop.test")
        assert o.wait_requests(1, timeout=5)
        sid = a.request("GET", path, authority="shop.test")
        r = a.response(sid, timeout=30)
        assert r.status == 200 and r.header("content-length") == str(size)
        assert "collapsed" in r.header("cache-status"), r.headers
        assert r.reset == 2 and not r.ended and len(r.body) < size, r
        assert bytes(r.body) == pattern(size)[:len(r.body)]
        assert a.get("/c/after/100").status == 200
    assert m.alive()


# --- hits held by reference, not copied --------------------------------------------------------

MIB = 1024 * KIB


def test_stalled_hits_hold_references_not_copies(moat_factory, origin_factory):
    """100 streams ask for a cached 1 MiB object and the client opens no window: each stream
    waits with a reference on the stored object, no copy (moat_http2_buffered_bytes stays 0,
    docs/http2.md); 20 streams of a 1 MiB pass on the same terms hold copied bytes, at most
    http2.stream_buffer each. Once the client reads, every body arrives whole and in order."""
    o = origin_factory(handler)
    m = moat_with(moat_factory, o, http2={"stream_buffer": "64KiB"})
    path = f"/c/big/{MIB}"
    with H2(m.port) as c:
        assert c.get(path).status == 200
        r = c.get(path)
        assert r.status == 200 and is_hit(r.header("cache-status"))
    with H2(m.port, auto_ack=False) as c:
        sids = [c.request("GET", path) for _ in range(100)]
        c.pump(lambda: False, timeout=1.5)  # moat sends what the windows allow, then waits
        mt = m.metrics(lambda mt: metric(mt, "moat_http2_streams_active") >= 100)
        assert metric(mt, "moat_http2_streams_active") == 100
        assert metric(mt, "moat_http2_buffered_bytes") == 0
        assert sum(len(c.streams[s].body) for s in sids) <= 65535  # the connection window
        c.open_windows(sids)
        for s in sids:
            r = c.response(s, timeout=60)
            assert r.status == 200 and is_hit(r.header("cache-status"))
            assert bytes(r.body) == pattern(MIB)
    assert origin_count(o, "/c/big/") == 1
    mt = m.metrics(lambda mt: metric(mt, "moat_http2_streams_active") == 0)
    assert metric(mt, "moat_http2_buffered_bytes") == 0

    # The same stall on passes: their bytes are copied, bounded per stream, and counted.
    with H2(m.port, auto_ack=False) as c:
        sids = [c.request("GET", f"/pass/big/{i}/{MIB}") for i in range(20)]
        mt = m.metrics(lambda mt: metric(mt, "moat_http2_buffered_bytes") >= 20 * 32 * KIB,
                       timeout=5)
        held = metric(mt, "moat_http2_buffered_bytes")
        assert 20 * 32 * KIB <= held <= 20 * 64 * KIB, held
        c.open_windows(sids)
        for i, s in enumerate(sids):
            r = c.response(s, timeout=60)
            assert r.status == 200 and bytes(r.body) == pattern(MIB)
    mt = m.metrics(lambda mt: metric(mt, "moat_http2_buffered_bytes") == 0)
    assert metric(mt, "moat_http2_buffered_bytes") == 0
