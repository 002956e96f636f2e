"""Cache: revalidation with the origin (304), stale-while-revalidate, Range answered from
the cache, invalidation after unsafe methods. Builds on the helpers of test_80_cache."""
import threading
import time

from conftest import metric
from test_80_cache import (MISS_STORED, STALE_STORED, age, cs, get, is_hit, seen, start,  # noqa: F401
                           site, so, ttl)


def test_stale_etag_revalidates_with_304_and_updates_headers(moat_factory, so, site, http):
    def body(req, n):
        return "the body\n"
    site.route("/r", [("Cache-Control", "max-age=1"), ("ETag", '"v1"'), ("X-Gen", "1")],
               body=body)
    m = start(moat_factory, so)
    assert cs(get(http, m, "/r")) == MISS_STORED
    time.sleep(2.2)
    # The origin now answers conditional requests with 304 and a new header value.
    def cond(req, origin):
        from origins import response
        if req.header("If-None-Match") == '"v1"':
            return response(304, b"", [("ETag", '"v1"'), ("Cache-Control", "max-age=60"),
                                       ("X-Gen", "2")], content_length=False)
        return response(200, b"changed\n", [("Cache-Control", "max-age=60")])
    so.handler = cond
    r = get(http, m, "/r")
    assert r.status_code == 200
    assert r.content == b"the body\n"                       # the stored body, not the 304's
    assert cs(r) == ["moat", "fwd=stale", "fwd-status=304", "stored"]
    assert r.headers["X-Gen"] == "2"                         # header updated from the 304
    last = seen(so, "/r")[-1]
    assert last.header("If-None-Match") == '"v1"'           # moat asked with the validator
    # Now fresh again for 60 s: a hit, without the origin.
    n = len(seen(so, "/r"))
    r = get(http, m, "/r")
    assert is_hit(r) and r.content == b"the body\n" and r.headers["X-Gen"] == "2"
    assert len(seen(so, "/r")) == n


def test_stale_last_modified_revalidates_with_if_modified_since(moat_factory, so, site, http):
    lm = "Wed, 21 Oct 2015 07:28:00 GMT"
    site.route("/lm", [("Cache-Control", "max-age=1"), ("Last-Modified", lm)])
    m = start(moat_factory, so)
    first = get(http, m, "/lm")
    assert cs(first) == MISS_STORED
    time.sleep(2.2)
    r = get(http, m, "/lm")
    req = seen(so, "/lm")[-1]
    assert req.header("If-Modified-Since") == lm
    # The scripted site ignores conditions and sends a new 200: stored as the new version.
    assert cs(r) == STALE_STORED and r.content != first.content


def test_stale_while_revalidate_refreshes_in_the_background(moat_factory, so, site, http):
    site.route("/swr", [("Cache-Control", "max-age=1, stale-while-revalidate=30")], delay=0.0)
    m = start(moat_factory, so)
    first = get(http, m, "/swr")
    assert cs(first) == MISS_STORED
    time.sleep(2.2)
    # The refresh is slow (1 s): every request, the one that starts it included, gets the
    # stale copy at once, and the origin sees one refresh.
    site.route("/swr", [("Cache-Control", "max-age=60, stale-while-revalidate=30")], delay=1.0)
    before = metric(m.metrics(), "moat_cache_background_refreshes_total")
    t0 = time.monotonic()
    stale = [get(http.__class__(), m, "/swr") for _ in range(4)]
    took = time.monotonic() - t0
    for r in stale:
        assert cs(r) == ["moat", "hit", "detail=stale-while-revalidate"], cs(r)
        assert r.content == first.content
    assert took < 0.9, took                                  # nobody waited for the 1 s origin
    so.wait_requests(2, timeout=3)
    assert len(seen(so, "/swr")) == 2                        # one refresh, not four
    # Once the background fetch is in, the refreshed object is a plain hit.
    deadline = time.monotonic() + 3
    while True:
        r = get(http, m, "/swr")
        if r.content != first.content or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert is_hit(r) and r.content != first.content, (cs(r), r.content)
    assert len(seen(so, "/swr")) == 2
    mt = m.metrics(until=lambda mt: metric(mt, "moat_cache_background_refreshes_total") > before)
    assert metric(mt, "moat_cache_background_refreshes_total") - before == 1
    deadline = time.monotonic() + 3  # the line comes when the fetch ends, after the head
    while True:
        bg = [l for l in m.access_lines(1) if l.get("background")]
        if bg or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(bg) == 1 and bg[0]["path"] == "/swr" and bg[0]["status"] == 200, bg


def test_stale_while_revalidate_background_revalidates_with_304(moat_factory, so, site, http):
    # The background refresh asks with the stored validator; a 304 refreshes the object.
    site.route("/swr304", [("Cache-Control", "max-age=1, stale-while-revalidate=30"),
                           ("ETag", '"e1"')], body="kept body\n")
    m = start(moat_factory, so)
    assert cs(get(http, m, "/swr304")) == MISS_STORED
    time.sleep(2.2)

    def cond(req, origin):
        from origins import response
        assert req.header("If-None-Match") == '"e1"', req.headers
        return response(304, b"", [("ETag", '"e1"'), ("Cache-Control", "max-age=60")],
                        content_length=False)
    so.handler = cond
    r = get(http, m, "/swr304")
    assert cs(r) == ["moat", "hit", "detail=stale-while-revalidate"] and r.text == "kept body\n"
    so.wait_requests(2, timeout=3)
    deadline = time.monotonic() + 3
    while True:
        r = get(http, m, "/swr304")
        if cs(r)[2].startswith("ttl=") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert is_hit(r) and ttl(r) > 50 and r.text == "kept body\n", cs(r)
    assert len(so.requests) == 2


def test_range_from_cache(moat_factory, so, site, http):
    site.route("/big", [("Cache-Control", "max-age=60")], body="0123456789" * 10)
    m = start(moat_factory, so)
    assert cs(get(http, m, "/big")) == MISS_STORED
    r = get(http, m, "/big", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == b"0123456789"
    assert r.headers["Content-Range"] == "bytes 10-19/100"
    r = get(http, m, "/big", headers={"Range": "bytes=-3"})
    assert r.status_code == 206 and r.content == b"789"
    r = get(http, m, "/big", headers={"Range": "bytes=95-"})
    assert r.status_code == 206 and r.content == b"56789"
    r = get(http, m, "/big", headers={"Range": "bytes=200-300"})
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */100"
    # Several ranges: the whole body with 200 (multipart is not supported).
    r = get(http, m, "/big", headers={"Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and len(r.content) == 100
    # If-Range with a different validator: the whole body.
    r = get(http, m, "/big", headers={"Range": "bytes=0-1", "If-Range": '"other"'})
    assert r.status_code == 200 and len(r.content) == 100
    assert len(seen(so, "/big")) == 1                        # all from the cache


def test_unsafe_method_invalidates_target_and_location(moat_factory, so, site, http):
    site.route("/item", [("Cache-Control", "max-age=60")])
    site.route("/list", [("Cache-Control", "max-age=60")])
    m = start(moat_factory, so)
    for p in ("/item", "/list"):
        assert cs(get(http, m, p)) == MISS_STORED
        assert is_hit(get(http, m, p))
    # A failed POST changes nothing.
    site.route("/item", [("Cache-Control", "max-age=60")], status=500)
    http.post(m.url("/item"), data=b"x", timeout=10)
    site.route("/item", [("Cache-Control", "max-age=60")])
    assert is_hit(get(http, m, "/item"))
    # A successful POST invalidates its target, and the Location it names.
    site.route("/item", [("Cache-Control", "max-age=60"), ("Location", "/list")])
    r = http.post(m.url("/item"), data=b"x", timeout=10)
    assert r.status_code == 200
    site.route("/item", [("Cache-Control", "max-age=60")])
    assert cs(get(http, m, "/item")) == MISS_STORED
    assert cs(get(http, m, "/list")) == MISS_STORED
