"""test_80_cache: the shared cache end to end: what is stored (RFC 9111: max-age, s-maxage,
Expires, heuristics, no-store/private/Set-Cookie/Authorization/Vary), targeted fields
(RFC 9213), Cache-Status (RFC 9211) and Age, HEAD from a stored GET, If-None-Match from the
cache, collapsed forwarding and hit-for-pass, stale-if-error (RFC 5861), purge by each
selector, metrics, quick mode and the memory bound. Every test also checks what the origin
received: a cache test that does not count origin requests proves nothing."""

import email.utils
import json
import socket
import struct
import threading
import time

import pytest
import requests

from conftest import free_port, metric
from origins import pattern, response
from rawhttp import Client


# --- a scripted site ------------------------------------------------------------------------

class Site:
    """An origin handler with per-path behaviour. Each route is (status, headers, body, delay);
    a None body becomes "METHOD TARGET #N\\n" where N counts every request the site answered,
    so a refetched body always differs from the stored one. Unknown paths get the default
    route (cacheable for 60 s). Arrival times are kept per request (monotonic)."""

    DEFAULT = (200, [("Cache-Control", "max-age=60")], None, 0.0)

    def __init__(self):
        self.routes = {}
        self.n = 0
        self.lock = threading.Lock()
        self.arrivals = []  # (monotonic time, method, target)

    def route(self, path, headers=(), status=200, body=None, delay=0.0):
        self.routes[path] = (status, list(headers), body, delay)

    def __call__(self, req, origin):
        with self.lock:
            self.n += 1
            n = self.n
            self.arrivals.append((time.monotonic(), req.method, req.target))
        status, headers, body, delay = self.routes.get(
            req.target, self.routes.get(req.path, self.DEFAULT))
        if callable(body):
            body = body(req, n)
        if body is None:
            body = f"GET {req.target} #{n}\n"
        if isinstance(body, str):
            body = body.encode()
        hdrs = [("X-Seq", str(n))] + list(headers)
        if req.method == "HEAD":
            out = response(status, b"", hdrs + [("Content-Length", str(len(body)))],
                           content_length=False)
        elif status in (204, 304):
            out = response(status, b"", hdrs, content_length=False)
        else:
            out = response(status, body, hdrs)
        return [delay, out] if delay else out


@pytest.fixture
def site():
    return Site()


@pytest.fixture
def so(origin_factory, site):
    """The origin serving <site>."""
    return origin_factory(site, name="site")


def start(moat_factory, origin, cache=None, **over):
    cfg = {}
    if cache is not None:
        cfg["cache"] = cache
    cfg.update(over)
    return moat_factory(origin, admin=True, **cfg)


def seen(origin, target=None, method=None):
    """Requests the origin received (for <target> / <method> if given)."""
    return [r for r in origin.requests
            if (target is None or r.target == target) and (method is None or r.method == method)]


def hdr(r, name):
    if hasattr(r, "status_code"):
        return r.headers.get(name)
    return r.header(name)


def cs(r):
    """Cache-Status as a list of its parameters: ["moat", "hit", "ttl=59"]."""
    v = hdr(r, "Cache-Status")
    assert v is not None, f"no Cache-Status on {r!r}"
    return [p.strip() for p in v.split(";")]


MISS_STORED = ["moat", "fwd=uri-miss", "stored"]
MISS = ["moat", "fwd=uri-miss"]
COLLAPSED = ["moat", "fwd=uri-miss", "collapsed"]
BYPASS = ["moat", "fwd=bypass"]
STALE_STORED = ["moat", "fwd=stale", "stored"]
STALE_IF_ERROR = ["moat", "hit", "detail=stale-if-error"]


def ttl(r):
    """The ttl of a fresh hit (asserts the Cache-Status is exactly a fresh hit)."""
    p = cs(r)
    assert len(p) == 3 and p[:2] == ["moat", "hit"] and p[2].startswith("ttl="), p
    return int(p[2][4:])


def is_hit(r):
    p = cs(r)
    return p[:2] == ["moat", "hit"]


def age(r):
    v = hdr(r, "Age")
    assert v is not None, f"no Age on a hit: {r!r}"
    return int(v)


def get(http, m, path, host=None, **kw):
    headers = kw.pop("headers", {})
    if host:
        headers["Host"] = host
    return http.get(m.url(path), headers=headers, timeout=10, **kw)


def httpdate(t):
    return email.utils.formatdate(t, usegmt=True)


def counters(m):
    mt = m.metrics()
    names = ("hits", "misses", "collapsed", "stale", "passes", "evictions")
    out = {n: metric(mt, f"moat_cache_{n}_total") for n in names}
    out["objects"] = metric(mt, "moat_cache_objects")
    out["bytes"] = metric(mt, "moat_cache_bytes")
    return out


def wait_counters(m, pred, timeout=2.0):
    """Scrapes until pred(counters) holds (moat may count just after the last byte)."""
    deadline = time.monotonic() + timeout
    while True:
        c = counters(m)
        if pred(c) or time.monotonic() > deadline:
            return c
        time.sleep(0.02)


def purge(m, body):
    r = m.admin("POST", "/purge", data=body if isinstance(body, (str, bytes)) else json.dumps(body),
                headers={"Content-Type": "application/json"})
    return r


def purged(m, body):
    r = purge(m, body)
    assert r.status_code == 200, (r.status_code, r.text)
    j = r.json()
    assert j.get("ok") is True, j
    return j["purged"]


# --- freshness ------------------------------------------------------------------------------

def test_miss_then_hit(moat_factory, so, site, http):
    m = start(moat_factory, so)
    r1 = get(http, m, "/a")
    assert r1.status_code == 200 and r1.text == "GET /a #1\n"
    assert cs(r1) == MISS_STORED
    r2 = get(http, m, "/a")
    assert r2.status_code == 200 and r2.text == "GET /a #1\n"
    assert is_hit(r2)
    assert hdr(r2, "X-Seq") == "1"
    assert len(seen(so, "/a")) == 1
    # The access log says what the cache did.
    lines = [l for l in m.access_lines(2) if l["path"] == "/a"]
    assert [l.get("cache") for l in lines] == ["fwd=uri-miss; stored", "hit"], lines
    assert lines[1]["upstream"] is None


def test_max_age_expiry_refetches(moat_factory, so, site, http):
    site.route("/exp", [("Cache-Control", "max-age=2")])
    m = start(moat_factory, so)
    r = get(http, m, "/exp")
    assert cs(r) == MISS_STORED and r.text == "GET /exp #1\n"
    r = get(http, m, "/exp")
    assert is_hit(r) and r.text == "GET /exp #1\n"
    assert 0 <= ttl(r) <= 2
    assert len(seen(so, "/exp")) == 1
    time.sleep(3.1)
    r = get(http, m, "/exp")
    assert r.text == "GET /exp #2\n"
    assert cs(r) == STALE_STORED
    assert len(seen(so, "/exp")) == 2
    r = get(http, m, "/exp")
    assert is_hit(r) and r.text == "GET /exp #2\n"
    assert len(seen(so, "/exp")) == 2


def test_ttl_and_age_on_hits(moat_factory, so, site, http):
    site.route("/t", [("Cache-Control", "max-age=100")])
    m = start(moat_factory, so)
    get(http, m, "/t")
    r = get(http, m, "/t")
    assert age(r) in (0, 1)
    assert ttl(r) + age(r) == 100, (hdr(r, "Cache-Status"), hdr(r, "Age"))
    time.sleep(1.1)
    r = get(http, m, "/t")
    assert age(r) in (1, 2)
    assert ttl(r) + age(r) == 100, (hdr(r, "Cache-Status"), hdr(r, "Age"))
    assert len(seen(so, "/t")) == 1


def test_origin_age_counts(moat_factory, so, site, http):
    # RFC 9111 4.2.3: the Age the origin (or a cache before it) sent is part of the age.
    site.route("/aged", [("Cache-Control", "max-age=60"), ("Age", "30")])
    m = start(moat_factory, so)
    get(http, m, "/aged")
    r = get(http, m, "/aged")
    assert 30 <= age(r) <= 31, hdr(r, "Age")
    assert ttl(r) + age(r) == 60
    # An origin Age beyond the lifetime: stored stale (or not stored), never a hit.
    site.route("/too-old", [("Cache-Control", "max-age=60"), ("Age", "120")])
    get(http, m, "/too-old")
    r = get(http, m, "/too-old")
    assert not is_hit(r)
    assert len(seen(so, "/too-old")) == 2


def test_s_maxage_beats_max_age(moat_factory, so, site, http):
    site.route("/s1", [("Cache-Control", "max-age=0, s-maxage=60")])
    site.route("/s2", [("Cache-Control", "s-maxage=0, max-age=60")])
    m = start(moat_factory, so)
    assert cs(get(http, m, "/s1")) == MISS_STORED
    r = get(http, m, "/s1")
    assert 59 <= ttl(r) <= 60
    assert len(seen(so, "/s1")) == 1
    # The client still sees the origin's Cache-Control untouched.
    assert r.headers["Cache-Control"] == "max-age=0, s-maxage=60"
    get(http, m, "/s2")
    r = get(http, m, "/s2")
    assert not is_hit(r), hdr(r, "Cache-Status")
    assert r.text == "GET /s2 #3\n"
    assert len(seen(so, "/s2")) == 2


def test_expires(moat_factory, so, site, http):
    now = time.time()
    site.route("/e1", [("Date", httpdate(now)), ("Expires", httpdate(now + 60))])
    site.route("/e0", [("Date", httpdate(now)), ("Expires", httpdate(now - 60))])
    site.route("/ebad", [("Date", httpdate(now)), ("Expires", "0")])
    m = start(moat_factory, so)
    assert cs(get(http, m, "/e1")) == MISS_STORED
    r = get(http, m, "/e1")
    assert 57 <= ttl(r) <= 60
    assert len(seen(so, "/e1")) == 1
    for p in ("/e0", "/ebad"):  # already expired: never a hit
        get(http, m, p)
        r = get(http, m, p)
        assert not is_hit(r), (p, hdr(r, "Cache-Status"))
        assert len(seen(so, p)) == 2, p


def test_max_age_beats_expires(moat_factory, so, site, http):
    now = time.time()
    site.route("/me", [("Date", httpdate(now)), ("Expires", httpdate(now - 60)),
                       ("Cache-Control", "max-age=60")])
    m = start(moat_factory, so)
    get(http, m, "/me")
    r = get(http, m, "/me")
    assert 59 <= ttl(r) <= 60
    assert len(seen(so, "/me")) == 1


def test_heuristic_freshness(moat_factory, so, site, http):
    lm = httpdate(time.time() - 10 * 86400)  # 10 % of 10 days = 1 day, capped at 60 s
    site.route("/h200", [("Last-Modified", lm)])
    site.route("/h404", [("Last-Modified", lm)], status=404)
    site.route("/h500", [("Last-Modified", lm)], status=500)
    site.route("/nolm", [])
    m = start(moat_factory, so, cache={"heuristic_max": "1m"})
    for p in ("/h200", "/h404"):
        assert cs(get(http, m, p)) == MISS_STORED, p
        r = get(http, m, p)
        assert 58 <= ttl(r) <= 60, (p, hdr(r, "Cache-Status"))
        assert len(seen(so, p)) == 1, p
    assert r.status_code == 404
    for p in ("/h500", "/nolm"):  # not heuristically cacheable / no Last-Modified
        r = get(http, m, p)
        assert cs(r) == MISS, (p, hdr(r, "Cache-Status"))
        r = get(http, m, p)
        assert not is_hit(r), p
        assert len(seen(so, p)) == 2, p


# --- what is not stored ---------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    [("Cache-Control", "no-store, max-age=60")],
    [("Cache-Control", "private, max-age=60")],
    [("Cache-Control", "max-age=60"), ("Set-Cookie", "sid=abc; Path=/")],
    [("Cache-Control", "max-age=60"), ("Vary", "*")],
], ids=["no-store", "private", "set-cookie", "vary-star"])  # Vary: test_83_cache_vary
def test_not_stored(moat_factory, so, site, http, headers):
    site.route("/ns", headers)
    m = start(moat_factory, so)
    r1 = get(http, m, "/ns")
    assert r1.status_code == 200 and r1.text == "GET /ns #1\n"
    assert cs(r1) == MISS
    for k, v in headers:  # passed through to the client unchanged
        assert r1.headers.get(k) == v, (k, r1.headers)
    r2 = get(http, m, "/ns")
    assert r2.text == "GET /ns #2\n"
    assert not is_hit(r2)
    assert len(seen(so, "/ns")) == 2


def test_authorization_not_stored(moat_factory, so, site, http):
    m = start(moat_factory, so)
    auth = {"Authorization": "Bearer xyz"}
    r = get(http, m, "/private-doc", headers=dict(auth))
    assert cs(r) == MISS
    assert seen(so, "/private-doc")[0].header("Authorization") == "Bearer xyz"
    r = get(http, m, "/private-doc", headers=dict(auth))
    assert not is_hit(r)
    r = get(http, m, "/private-doc")
    assert not is_hit(r)
    assert len(seen(so, "/private-doc")) == 3


@pytest.mark.parametrize("cc", ["public, max-age=60", "s-maxage=60",
                                "must-revalidate, max-age=60"])
def test_authorization_stored_when_allowed(moat_factory, so, site, http, cc):
    site.route("/shared", [("Cache-Control", cc)])
    m = start(moat_factory, so)
    r = get(http, m, "/shared", headers={"Authorization": "Bearer xyz"})
    assert cs(r) == MISS_STORED, cc
    r = get(http, m, "/shared")
    assert is_hit(r) and r.text == "GET /shared #1\n", cc
    assert len(seen(so, "/shared")) == 1


def test_only_get_and_head_use_the_cache(moat_factory, so, site, http):
    m = start(moat_factory, so)
    get(http, m, "/doc")
    r = http.post(m.url("/doc"), data=b"x=1", timeout=5)
    assert r.status_code == 200 and r.text == "GET /doc #2\n"
    assert cs(r) == BYPASS
    r = http.put(m.url("/doc"), data=b"x=1", timeout=5)
    assert cs(r) == BYPASS
    r = http.delete(m.url("/doc"), timeout=5)
    assert cs(r) == BYPASS
    assert [q.method for q in seen(so, "/doc")] == ["GET", "POST", "PUT", "DELETE"]
    # An unsafe method is never stored; its success invalidated the stored GET (RFC 9111
    # 4.4, see test_82_cache_validation), so the next GET fetches and stores anew.
    r = get(http, m, "/doc")
    assert cs(r) == MISS_STORED and r.text == "GET /doc #5\n"
    assert is_hit(get(http, m, "/doc"))
    assert len(seen(so, "/doc")) == 5


# --- the cache key --------------------------------------------------------------------------

def test_key_host_case_port_and_query(moat_factory, so, site, http):
    m = start(moat_factory, so)
    assert cs(get(http, m, "/k?a=1&b=2", host="Shop.Example")) == MISS_STORED
    # Host is lowercased: same key.
    r = get(http, m, "/k?a=1&b=2", host="shop.example")
    assert is_hit(r) and r.text == "GET /k?a=1&b=2 #1\n"
    # The origin saw the Host as sent.
    assert seen(so)[0].header("Host") == "Shop.Example"
    # A port that was sent is part of the key; another host is another key.
    assert cs(get(http, m, "/k?a=1&b=2", host="shop.example:8080")) == MISS_STORED
    assert cs(get(http, m, "/k?a=1&b=2", host="other.example")) == MISS_STORED
    # The query is kept exactly: order matters, and so does its absence.
    assert cs(get(http, m, "/k?b=2&a=1", host="shop.example")) == MISS_STORED
    assert cs(get(http, m, "/k", host="shop.example")) == MISS_STORED
    assert cs(get(http, m, "/K?a=1&b=2", host="shop.example")) == MISS_STORED
    assert len(seen(so)) == 6
    # And the key is http://HOST/TARGET, as purge by url shows.
    assert purged(m, {"url": "http://shop.example:8080/k?a=1&b=2"}) == 1
    assert cs(get(http, m, "/k?a=1&b=2", host="shop.example:8080")) == MISS_STORED
    assert is_hit(get(http, m, "/k?a=1&b=2", host="shop.example"))
    assert len(seen(so)) == 7


# --- targeted fields (RFC 9213) -------------------------------------------------------------

TARGETED = ("CDN-Cache-Control", "Moat-Cache-Control", "Cache-Tag", "Surrogate-Key")


def assert_stripped(r, names=TARGETED):
    for n in names:
        assert n not in r.headers, (n, dict(r.headers))


def test_cdn_cache_control_overrides(moat_factory, so, site, http):
    site.route("/cdn", [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")])
    site.route("/cdn-ns", [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")])
    m = start(moat_factory, so)
    r = get(http, m, "/cdn")
    assert cs(r) == MISS_STORED
    assert r.headers["Cache-Control"] == "no-store"  # for the browser, untouched
    assert_stripped(r)
    r = get(http, m, "/cdn")
    assert 59 <= ttl(r) <= 60 and r.text == "GET /cdn #1\n"
    assert r.headers["Cache-Control"] == "no-store"
    assert_stripped(r)
    assert len(seen(so, "/cdn")) == 1
    r = get(http, m, "/cdn-ns")
    assert cs(r) == MISS
    assert r.headers["Cache-Control"] == "max-age=60"
    assert_stripped(r)
    get(http, m, "/cdn-ns")
    assert len(seen(so, "/cdn-ns")) == 2


def test_moat_cache_control_wins(moat_factory, so, site, http):
    site.route("/mcc", [("Cache-Control", "no-store"), ("CDN-Cache-Control", "no-store"),
                        ("Moat-Cache-Control", "max-age=30")])
    site.route("/mcc-ns", [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "max-age=60"),
                           ("Moat-Cache-Control", "no-store")])
    m = start(moat_factory, so)
    r = get(http, m, "/mcc")
    assert cs(r) == MISS_STORED
    assert_stripped(r)
    r = get(http, m, "/mcc")
    assert 29 <= ttl(r) <= 30
    assert_stripped(r)
    assert len(seen(so, "/mcc")) == 1
    assert cs(get(http, m, "/mcc-ns")) == MISS
    r = get(http, m, "/mcc-ns")
    assert not is_hit(r)
    assert_stripped(r)
    assert len(seen(so, "/mcc-ns")) == 2


def test_targeted_field_name_configurable(moat_factory, so, site, http):
    site.route("/x", [("Cache-Control", "no-store"), ("CDN-Cache-Control", "no-store"),
                      ("Edge-Control", "max-age=40")])
    m = start(moat_factory, so, cache={"targeted_field": "Edge-Control"})
    r = get(http, m, "/x")
    assert cs(r) == MISS_STORED
    assert_stripped(r, ("Edge-Control", "CDN-Cache-Control"))
    r = get(http, m, "/x")
    assert 39 <= ttl(r) <= 40
    assert_stripped(r, ("Edge-Control", "CDN-Cache-Control"))
    assert len(seen(so, "/x")) == 1


def test_targeted_field_ignores_expires(moat_factory, so, site, http):
    # RFC 9213 2.1: a targeted field replaces Cache-Control *and* Expires.
    now = time.time()
    site.route("/tx", [("Date", httpdate(now)), ("Expires", httpdate(now + 3600)),
                       ("CDN-Cache-Control", "max-age=20")])
    m = start(moat_factory, so)
    get(http, m, "/tx")
    r = get(http, m, "/tx")
    assert 19 <= ttl(r) <= 20
    assert len(seen(so, "/tx")) == 1


# --- HEAD and conditional requests ----------------------------------------------------------

def test_head_answered_from_stored_get(moat_factory, so, site, http):
    site.route("/hd", [("Cache-Control", "max-age=60"), ("ETag", '"e1"')], body=pattern(1000))
    m = start(moat_factory, so)
    with Client(m.port) as c:
        c.send("GET /hd HTTP/1.1\r\nHost: h.example\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == pattern(1000)
        assert cs(r) == MISS_STORED
        c.send("HEAD /hd HTTP/1.1\r\nHost: h.example\r\n\r\n")
        r = c.read_response("HEAD")
        assert r.status == 200 and is_hit(r)
        assert r.header("Content-Length") == "1000"
        assert r.header("ETag") == '"e1"'
        # No body followed the HEAD response: the next response parses cleanly.
        c.send("GET /hd HTTP/1.1\r\nHost: h.example\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == pattern(1000) and is_hit(r)
    assert [q.method for q in seen(so)] == ["GET"]


def test_head_miss_goes_as_head_and_stores_nothing(moat_factory, so, site, http):
    site.route("/hm", [("Cache-Control", "max-age=60")], body=pattern(500))
    m = start(moat_factory, so)
    with Client(m.port) as c:
        c.send("HEAD /hm HTTP/1.1\r\nHost: h.example\r\n\r\n")
        r = c.read_response("HEAD")
        assert r.status == 200 and r.header("Content-Length") == "500"
        assert cs(r) == MISS
        c.send("HEAD /hm HTTP/1.1\r\nHost: h.example\r\n\r\n")
        r = c.read_response("HEAD")
        assert not is_hit(r)
        c.send("GET /hm HTTP/1.1\r\nHost: h.example\r\n\r\n")
        r = c.read_response()
        assert r.body == pattern(500)
        assert cs(r) == MISS_STORED
        c.send("HEAD /hm HTTP/1.1\r\nHost: h.example\r\n\r\n")
        r = c.read_response("HEAD")
        assert is_hit(r)
    assert [q.method for q in seen(so)] == ["HEAD", "HEAD", "GET"]


def test_if_none_match_304_from_cache(moat_factory, so, site, http):
    site.route("/etag", [("Cache-Control", "max-age=60"), ("ETag", '"v1"')])
    m = start(moat_factory, so)
    get(http, m, "/etag")
    for inm in ('"v1"', 'W/"v1"', '"zz", "v1"', "*"):
        r = get(http, m, "/etag", headers={"If-None-Match": inm})
        assert r.status_code == 304, (inm, r.status_code)
        assert r.content == b""
        assert r.headers.get("ETag") == '"v1"'
        assert is_hit(r), (inm, hdr(r, "Cache-Status"))
    r = get(http, m, "/etag", headers={"If-None-Match": '"v2"'})
    assert r.status_code == 200 and r.text == "GET /etag #1\n" and is_hit(r)
    assert len(seen(so, "/etag")) == 1


# --- collapsed forwarding and hit-for-pass --------------------------------------------------

def concurrent_gets(m, path, n, host="c.example", timeout=15):
    """n clients request <path> at the same moment; returns rawhttp responses in order."""
    out = [None] * n
    errs = []
    barrier = threading.Barrier(n)

    def one(i):
        try:
            with Client(m.port, timeout=timeout) as c:
                barrier.wait(5)
                c.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
                out[i] = c.read_response()
        except Exception as e:  # reported by the assertion below
            errs.append(repr(e))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert not errs, errs
    return out


def test_collapsed_forwarding(moat_factory, so, site, http):
    site.route("/slow", [("Cache-Control", "max-age=60")], body=pattern(20000), delay=0.6)
    m = start(moat_factory, so)
    before = counters(m)
    rs = concurrent_gets(m, "/slow", 10)
    assert len(seen(so, "/slow")) == 1
    for r in rs:
        assert r.status == 200 and r.body == pattern(20000)
    kinds = sorted(tuple(cs(r)) for r in rs)
    assert kinds.count(tuple(MISS_STORED)) == 1, kinds
    assert kinds.count(tuple(COLLAPSED)) == 9, kinds
    c = wait_counters(m, lambda c: c["collapsed"] - before["collapsed"] >= 9)
    assert c["collapsed"] - before["collapsed"] == 9, c
    r = get(http, m, "/slow", host="c.example")
    assert is_hit(r) and r.content == pattern(20000)
    assert len(seen(so, "/slow")) == 1


def parse_raw(data):
    """A whole response read until close -> (head text, decoded body)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            le = rest.index(b"\r\n")
            n = int(rest[:le].split(b";")[0], 16)
            if n == 0:
                break
            body += rest[le + 2:le + 2 + n]
            assert rest[le + 2 + n:le + 4 + n] == b"\r\n"
            rest = rest[le + 4 + n:]
        return lines[0], hdrs, bytes(body)
    if "content-length" in hdrs:
        n = int(hdrs["content-length"])
        assert len(rest) == n, (len(rest), n)
    return lines[0], hdrs, rest


def test_waiters_receive_the_body_as_it_streams(moat_factory, so, site, http):
    first = b"FIRST-HALF-" + pattern(30000)
    second = b"SECOND-HALF-" + pattern(30000)
    head = response(200, b"", [("Cache-Control", "max-age=60"),
                               ("Content-Length", str(len(first) + len(second)))],
                    content_length=False)
    so.handler = lambda req, origin: [head + first, 1.5, second]
    m = start(moat_factory, so)
    req = "GET /stream HTTP/1.1\r\nHost: s.example\r\nConnection: close\r\n\r\n"
    with Client(m.port, timeout=10) as writer, Client(m.port, timeout=10) as waiter:
        writer.send(req)
        got_w = writer.read_until(b"FIRST-HALF-")  # the origin now sleeps 1.5 s
        t0 = time.monotonic()
        waiter.send(req)
        waiter.sock.settimeout(1.0)
        got_q = waiter.read_until(b"FIRST-HALF-")  # before the origin sent the rest
        assert time.monotonic() - t0 < 1.0
        assert b"collapsed" in got_q.split(b"\r\n\r\n")[0].lower(), got_q[:500]
        waiter.sock.settimeout(10)
        for c, got in ((writer, got_w), (waiter, got_q)):
            status, hdrs, body = parse_raw(got + c.read_all())
            assert status.split(" ")[1] == "200"
            assert body == first + second
    assert len(so.requests) == 1
    r = get(http, m, "/stream", host="s.example")
    assert is_hit(r) and r.content == first + second
    assert len(so.requests) == 1


def test_writer_client_leaving_does_not_cut_the_waiters(moat_factory, so, site, http):
    # The client whose miss fills the object goes away mid-body; the fetch goes on without
    # it, so the request collapsed onto it gets the whole body and the object is stored.
    first = b"FIRST-HALF-" + pattern(30000)
    second = b"SECOND-HALF-" + pattern(30000)
    head = response(200, b"", [("Cache-Control", "max-age=60"),
                               ("Content-Length", str(len(first) + len(second)))],
                    content_length=False)
    # The rest comes in two parts: writing the first of them to the gone client fails while
    # the body is still incomplete, so the fetch must go on without it.
    so.handler = lambda req, origin: [head + first, 1.0, second[:10000], 0.5, second[10000:]]
    m = start(moat_factory, so)
    before = metric(m.metrics(), "moat_cache_detached_fetches_total")
    req = "GET /left HTTP/1.1\r\nHost: s.example\r\nConnection: close\r\n\r\n"
    with Client(m.port, timeout=10) as waiter:
        writer = Client(m.port, timeout=10)
        writer.send(req)
        writer.read_until(b"FIRST-HALF-")
        waiter.send(req)
        got = waiter.read_until(b"FIRST-HALF-")
        assert b"collapsed" in got.split(b"\r\n\r\n")[0].lower(), got[:500]
        # Reset, not a FIN: moat's next write to it fails for sure.
        writer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        status, hdrs, body = parse_raw(got + waiter.read_all())
    assert status.split(" ")[1] == "200"
    assert body == first + second
    assert len(so.requests) == 1
    mt = m.metrics(until=lambda mt: metric(mt, "moat_cache_detached_fetches_total") > before)
    assert metric(mt, "moat_cache_detached_fetches_total") - before == 1
    r = get(http, m, "/left", host="s.example")
    assert is_hit(r) and r.content == first + second
    assert len(so.requests) == 1
    lines = [l for l in m.access_lines(3) if l["path"] == "/left"]
    assert [l.get("error") for l in lines].count("client_gone") == 1, lines


def test_collapsed_waiters_while_body_streams(moat_factory, so, site, http):
    # Waiters that queued while the fetch had no head yet are woken by the head and must
    # then follow the body as it keeps arriving (here: in two parts, 0.4 s apart).
    part1, part2 = pattern(40000), b"tail-" + pattern(40000)
    head = response(200, b"", [("Cache-Control", "max-age=60"),
                               ("Content-Length", str(len(part1) + len(part2)))],
                    content_length=False)
    so.handler = lambda req, origin: [0.5, head + part1, 0.4, part2]
    m = start(moat_factory, so)
    rs = concurrent_gets(m, "/two-parts", 4, timeout=5)
    for r in rs:
        assert r.status == 200 and r.body == part1 + part2
    kinds = sorted(tuple(cs(r)) for r in rs)
    assert kinds.count(tuple(MISS_STORED)) == 1 and kinds.count(tuple(COLLAPSED)) == 3, kinds
    assert len(so.requests) == 1
    r = get(http, m, "/two-parts", host="c.example")
    assert is_hit(r) and r.content == part1 + part2
    assert len(so.requests) == 1


def test_uncacheable_collapsed_waiters_go_to_origin(moat_factory, so, site, http):
    site.route("/nc", [("Cache-Control", "no-store")], delay=0.6)
    m = start(moat_factory, so)
    rs = concurrent_gets(m, "/nc", 5)
    for r in rs:
        assert r.status == 200 and r.body.startswith(b"GET /nc #")
    arr = sorted(t for t, _, tgt in site.arrivals if tgt == "/nc")
    assert len(arr) == 5, arr
    # One request went first; the other four waited for its (uncacheable) answer and only
    # then went to the origin themselves, all at once rather than one after the other.
    assert all(t - arr[0] >= 0.45 for t in arr[1:]), [round(t - arr[0], 3) for t in arr]
    assert arr[-1] - arr[1] < 0.45, [round(t - arr[0], 3) for t in arr]
    # The key is now hit-for-pass: straight to the origin.
    r = get(http, m, "/nc", host="c.example")
    assert cs(r) == BYPASS
    assert len(seen(so, "/nc")) == 6


def test_hit_for_pass_expires(moat_factory, so, site, http):
    site.route("/hfp", [("Cache-Control", "private")])
    m = start(moat_factory, so, cache={"pass_ttl": "2s"})
    before = counters(m)
    t0 = time.time()
    r = get(http, m, "/hfp")
    assert cs(r) == MISS
    r = get(http, m, "/hfp")
    assert cs(r) == BYPASS
    assert r.text == "GET /hfp #2\n"
    c = wait_counters(m, lambda c: c["passes"] - before["passes"] >= 1)
    assert c["passes"] - before["passes"] == 1, c
    site.route("/hfp", [("Cache-Control", "max-age=60")])
    r = get(http, m, "/hfp")
    assert cs(r) == BYPASS  # still within pass_ttl, even if the answer is cacheable now
    assert len(seen(so, "/hfp")) == 3
    time.sleep(max(0.0, t0 + 3.2 - time.time()))
    r = get(http, m, "/hfp")
    assert cs(r) == MISS_STORED
    n = len(seen(so, "/hfp"))
    r = get(http, m, "/hfp")
    assert is_hit(r)
    assert len(seen(so, "/hfp")) == n == 4


# --- stale-if-error -------------------------------------------------------------------------

def test_stale_if_error_origin_down(moat_factory, so, site, http):
    site.route("/sie", [("Cache-Control", "max-age=1, stale-if-error=60")])
    site.route("/nosie", [("Cache-Control", "max-age=1")])
    site.route("/shortsie", [("Cache-Control", "max-age=1, stale-if-error=1")])
    site.route("/mr", [("Cache-Control", "max-age=1, stale-if-error=60, must-revalidate")])
    m = start(moat_factory, so)
    for p in ("/sie", "/nosie", "/shortsie", "/mr"):
        assert cs(get(http, m, p)) == MISS_STORED, p
    time.sleep(3.2)  # all stale; /shortsie is past its stale-if-error window too
    so.stop()
    before = counters(m)
    r = get(http, m, "/sie")
    assert r.status_code == 200 and r.text == "GET /sie #1\n"
    assert cs(r) == STALE_IF_ERROR
    assert age(r) >= 3
    c = wait_counters(m, lambda c: c["stale"] - before["stale"] >= 1)
    assert c["stale"] - before["stale"] == 1, c
    for p in ("/nosie", "/shortsie", "/mr"):
        r = get(http, m, p)
        assert r.status_code == 502, (p, r.status_code, r.text)
    assert len(so.requests) == 4


def test_stale_if_error_on_5xx(moat_factory, so, site, http):
    site.route("/sie5", [("Cache-Control", "max-age=1, stale-if-error=60")])
    m = start(moat_factory, so)
    get(http, m, "/sie5")
    time.sleep(2.2)
    site.route("/sie5", [("Cache-Control", "no-store")], status=503, body="down\n")
    r = get(http, m, "/sie5")
    assert r.status_code == 200 and r.text == "GET /sie5 #1\n"
    assert cs(r) == STALE_IF_ERROR
    assert len(seen(so, "/sie5")) == 2


# --- purge ----------------------------------------------------------------------------------

def fill(http, m, host, paths):
    for p in paths:
        assert cs(get(http, m, p, host=host)) == MISS_STORED, (host, p)


def test_purge_url(moat_factory, so, site, http):
    m = start(moat_factory, so)
    fill(http, m, "shop.example", ["/p/1", "/p/2"])
    assert purged(m, {"url": "http://shop.example/p/1"}) == 1
    assert purged(m, {"url": "http://shop.example/p/1"}) == 0
    assert purged(m, {"url": "http://shop.example/nothing"}) == 0
    r = get(http, m, "/p/1", host="shop.example")
    assert cs(r) == MISS_STORED and r.text == "GET /p/1 #3\n"
    assert is_hit(get(http, m, "/p/2", host="shop.example"))
    assert len(seen(so)) == 3


def test_purge_prefix(moat_factory, so, site, http):
    m = start(moat_factory, so)
    fill(http, m, "shop.example", ["/static/a.css", "/static/js/b.js", "/staticx", "/other"])
    fill(http, m, "else.example", ["/static/a.css"])
    assert purged(m, {"prefix": "http://shop.example/static/"}) == 2
    for p in ("/static/a.css", "/static/js/b.js"):
        assert cs(get(http, m, p, host="shop.example")) == MISS_STORED, p
    for p in ("/staticx", "/other"):
        assert is_hit(get(http, m, p, host="shop.example")), p
    assert is_hit(get(http, m, "/static/a.css", host="else.example"))
    assert len(seen(so)) == 7


def test_purge_larger_than_a_slice(moat_factory, so, site, http):
    # 2,500 objects: more than one slice of 1,000, so the purge runs from the control loop
    # in steps and the admin answer waits for the last one (the connection then goes on).
    m = start(moat_factory, so)
    with requests.Session() as s:
        s.trust_env = False
        for i in range(2500):
            r = s.get(m.url(f"/bulk/{i}"), headers={"Host": "bulk.example"}, timeout=10)
            assert cs(r) == MISS_STORED
        fill(http, m, "bulk.example", ["/keep"])
        with requests.Session() as a:
            a.trust_env = False
            hdr = {"Authorization": f"Bearer {m.token}"} if m.token else {}
            url = f"http://127.0.0.1:{m.admin_port}"
            r = a.post(url + "/purge", json={"prefix": "http://bulk.example/bulk/"},
                       headers=hdr, timeout=10)
            assert r.status_code == 200 and r.json()["purged"] == 2500, r.text
            assert a.get(url + "/status", headers=hdr, timeout=5).status_code == 200
        assert cs(s.get(m.url("/bulk/7"), headers={"Host": "bulk.example"})) == MISS_STORED
    assert is_hit(get(http, m, "/keep", host="bulk.example"))
    assert len(seen(so)) == 2502
    deadline = time.monotonic() + 3
    while "purge: 2500 objects in" not in m.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = [l for l in m.stderr().splitlines() if "purge: 2500 objects in" in l]
    assert line and " 1 slice," not in line[0], m.stderr()[-2000:]


def test_purge_tag(moat_factory, so, site, http):
    site.route("/t1", [("Cache-Control", "max-age=60"), ("Cache-Tag", "product-42 list")])
    site.route("/t2", [("Cache-Control", "max-age=60"), ("Surrogate-Key", "home,product-42")])
    site.route("/t3", [("Cache-Control", "max-age=60"), ("Cache-Tag", "product-421, list")])
    site.route("/t4", [("Cache-Control", "max-age=60")])
    m = start(moat_factory, so)
    for p in ("/t1", "/t2", "/t3", "/t4"):
        r = get(http, m, p, host="shop.example")
        assert cs(r) == MISS_STORED
        assert_stripped(r)
    r = get(http, m, "/t1", host="shop.example")
    assert is_hit(r)
    assert_stripped(r)
    assert purged(m, {"tag": "product-42"}) == 2
    assert cs(get(http, m, "/t1", host="shop.example")) == MISS_STORED
    assert cs(get(http, m, "/t2", host="shop.example")) == MISS_STORED
    assert is_hit(get(http, m, "/t3", host="shop.example"))
    assert is_hit(get(http, m, "/t4", host="shop.example"))
    assert purged(m, {"tag": "list"}) == 2
    assert purged(m, {"tag": "home"}) == 1
    assert len(seen(so)) == 6


def test_purge_host(moat_factory, so, site, http):
    m = start(moat_factory, so)
    fill(http, m, "a.example", ["/1", "/2", "/3"])
    fill(http, m, "b.example", ["/1"])
    assert purged(m, {"host": "a.example"}) == 3
    assert cs(get(http, m, "/2", host="a.example")) == MISS_STORED
    assert is_hit(get(http, m, "/1", host="b.example"))
    assert len(seen(so)) == 5


def test_purge_all(moat_factory, so, site, http):
    m = start(moat_factory, so)
    b = counters(m)
    fill(http, m, "a.example", ["/1", "/2"])
    fill(http, m, "b.example", ["/1"])
    c = wait_counters(m, lambda c: c["objects"] >= 3)
    assert c["objects"] == 3 and c["bytes"] > b["bytes"], (b, c)
    assert purged(m, {"all": True}) == 3
    # The bytes charged for the objects are given back (the table itself stays).
    c = wait_counters(m, lambda c: c["objects"] == 0 and c["bytes"] == b["bytes"])
    assert c["objects"] == 0 and c["bytes"] == b["bytes"], (b, c)
    assert purged(m, {"all": True}) == 0
    assert cs(get(http, m, "/1", host="b.example")) == MISS_STORED
    assert len(seen(so)) == 4


def test_purge_soft(moat_factory, so, site, http):
    m = start(moat_factory, so)
    fill(http, m, "shop.example", ["/soft", "/soft2"])
    assert purged(m, {"url": "http://shop.example/soft", "soft": True}) == 1
    c = counters(m)
    assert c["objects"] == 2, c  # kept, only made stale
    r = get(http, m, "/soft", host="shop.example")
    assert cs(r) == STALE_STORED and r.text == "GET /soft #3\n"
    r = get(http, m, "/soft", host="shop.example")
    assert is_hit(r) and r.text == "GET /soft #3\n"
    assert is_hit(get(http, m, "/soft2", host="shop.example"))
    assert len(seen(so)) == 3


def test_purge_soft_keeps_stale_if_error(moat_factory, so, site, http):
    # A soft-purged object is stale but still there: if the origin is down, stale-if-error
    # can serve it.
    site.route("/sp", [("Cache-Control", "max-age=600, stale-if-error=600")])
    m = start(moat_factory, so)
    fill(http, m, "shop.example", ["/sp"])
    assert purged(m, {"url": "http://shop.example/sp", "soft": True}) == 1
    so.stop()
    r = get(http, m, "/sp", host="shop.example")
    assert r.status_code == 200 and r.text == "GET /sp #1\n"
    assert cs(r) == STALE_IF_ERROR


@pytest.mark.parametrize("body", ["{not json", "", "[]", "{}", '{"soft": true}'])
def test_purge_bad_request(moat_factory, so, site, http, body):
    m = start(moat_factory, so)
    fill(http, m, "shop.example", ["/keep"])
    r = purge(m, body)
    assert r.status_code == 400, (body, r.status_code, r.text)
    assert isinstance(r.json().get("error"), str) and r.json()["error"]
    assert is_hit(get(http, m, "/keep", host="shop.example"))
    assert len(seen(so)) == 1


def test_purge_wrong_method(moat_factory, so):
    m = start(moat_factory, so)
    assert m.admin("GET", "/purge").status_code == 405


# --- metrics --------------------------------------------------------------------------------

def test_metrics_move_by_exact_amounts(moat_factory, so, site, http):
    site.route("/m", [("Cache-Control", "max-age=60")], body=pattern(5000))
    m = start(moat_factory, so)
    mt = m.metrics()
    for n in ("hits_total", "misses_total", "collapsed_total", "stale_total", "passes_total",
              "evictions_total", "objects", "bytes"):
        assert ("moat_cache_" + n, "") in mt or any(k[0] == "moat_cache_" + n for k in mt), n
    b = counters(m)
    assert b["objects"] == 0, b
    assert cs(get(http, m, "/m")) == MISS_STORED
    c = wait_counters(m, lambda c: c["misses"] > b["misses"] and c["objects"] >= 1)
    assert c["misses"] - b["misses"] == 1, c
    assert c["hits"] - b["hits"] == 0, c
    assert c["objects"] == 1, c
    assert 5000 <= c["bytes"] - b["bytes"] <= 5000 + 64 * 1024, (b, c)
    for _ in range(3):
        assert is_hit(get(http, m, "/m"))
    c = wait_counters(m, lambda c: c["hits"] - b["hits"] >= 3, timeout=2.0)
    time.sleep(0.2)
    c = counters(m)
    assert c["hits"] - b["hits"] == 3, c
    assert c["misses"] - b["misses"] == 1, c
    assert c["collapsed"] == b["collapsed"] and c["stale"] == b["stale"], c
    assert c["evictions"] == b["evictions"], c
    assert c["objects"] == 1, c
    r = http.post(m.url("/m"), data=b"x", timeout=5)
    assert cs(r) == BYPASS
    time.sleep(0.2)
    c = counters(m)
    assert c["hits"] - b["hits"] == 3 and c["misses"] - b["misses"] == 1, c
    assert c["objects"] == 0, c  # the POST's 200 invalidated /m (RFC 9111 4.4)
    assert len(seen(so, "/m")) == 2


# --- configuration: on by default, off, quick mode ------------------------------------------

def test_cache_status_on_every_response_by_default(moat_factory, so, site, http):
    site.route("/404", [], status=404, body="nope\n")
    m = moat_factory(so)  # no cache section at all
    for p in ("/a", "/a", "/404"):
        assert hdr(get(http, m, p), "Cache-Status"), p
    r = http.post(m.url("/a"), data=b"", timeout=5)
    assert hdr(r, "Cache-Status")
    assert len(seen(so)) == 3


def test_cache_disabled_in_config(moat_factory, so, site, http):
    site.route("/d", [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "max-age=60")])
    m = start(moat_factory, so, cache={"enabled": False})
    for _ in range(2):
        r = get(http, m, "/d")
        assert r.status_code == 200
        assert "Cache-Status" not in r.headers
    assert len(seen(so, "/d")) == 2


def quick(moat_factory, origin, *extra):
    port = free_port()
    m = moat_factory.raw(["--origin", f"http://{origin.addr}", "--listen", f"127.0.0.1:{port}",
                          "--workers", "1", *extra])
    m.port = port
    return m.start()


def test_quick_mode_caches(moat_factory, so, site, http):
    m = quick(moat_factory, so)
    r = get(http, m, "/q")
    assert cs(r) == MISS_STORED
    r = get(http, m, "/q")
    assert is_hit(r) and r.text == "GET /q #1\n"
    assert len(seen(so, "/q")) == 1


def test_quick_mode_no_cache(moat_factory, so, site, http):
    m = quick(moat_factory, so, "--no-cache")
    for i in range(2):
        r = get(http, m, "/q")
        assert r.text == f"GET /q #{i + 1}\n"
        assert "Cache-Status" not in r.headers
    assert len(seen(so, "/q")) == 2


# --- the memory bound -----------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_memory_bound_evicts(moat_factory, so, site, http):
    size = 100 * 1024
    site.route("/big", [("Cache-Control", "max-age=60")], body=pattern(300 * 1024))
    m = start(moat_factory, so, cache={"memory": "1MiB", "max_object": "256KiB"})
    stored = 0
    for i in range(30):
        site.route(f"/obj/{i}", [("Cache-Control", "max-age=60")],
                   body=lambda req, n: pattern(size)[:-8] + b"%08d" % n)
        r = get(http, m, f"/obj/{i}")
        assert r.status_code == 200 and len(r.content) == size
        if cs(r) == MISS_STORED:
            stored += 1
    assert stored == 30
    c = wait_counters(m, lambda c: c["evictions"] > 0)
    assert c["evictions"] > 0, c
    assert c["bytes"] <= 1024 * 1024, c
    assert c["objects"] <= 10, c
    assert c["evictions"] == stored - c["objects"], c
    # The newest object is still there; the oldest ones are gone.
    r = get(http, m, "/obj/29")
    assert is_hit(r) and len(r.content) == size
    assert len(seen(so, "/obj/29")) == 1
    refetched = 0
    for i in range(5):
        r = get(http, m, f"/obj/{i}")
        assert len(r.content) == size
        refetched += not is_hit(r)
    assert refetched >= 1
    # Larger than max_object: delivered whole, not stored.
    r = get(http, m, "/big")
    assert r.content == pattern(300 * 1024)
    assert cs(r) == MISS
    r = get(http, m, "/big")
    assert r.content == pattern(300 * 1024) and not is_hit(r)
    assert len(seen(so, "/big")) == 2
    c = counters(m)
    assert c["bytes"] <= 1024 * 1024, c
