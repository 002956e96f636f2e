"""Cache rules (sites[].rules, first match wins, like CDN page rules), their cache key options
(query, headers, cookies) and the default for static file types."""
import time

import pytest

from rawhttp import fetch
from test_80_cache import (BYPASS, COLLAPSED, MISS, MISS_STORED, cs, get, is_hit,  # noqa: F401
                           purged, seen, site, so, ttl)

BYPASS_RULE = ["moat", "fwd=bypass", "detail=rule"]


def start_rules(moat_factory, so, rules, cache=None):
    over = {"sites": [{"hosts": ["*"], "pool": "main", "rules": rules}]}
    if cache is not None:
        over["cache"] = cache
    return moat_factory(so, admin=True, **over)


def test_first_match_wins_bypass_then_everything(moat_factory, so, site, http):
    site.route("/api/x", [("Cache-Control", "max-age=60")])
    site.route("/static/a.txt", [("Cache-Control", "no-store")])
    m = start_rules(moat_factory, so, [
        {"match": {"path": "/api/*"}, "cache": "bypass"},
        {"match": {"path": "/*"}, "cache": "everything", "edge_ttl": "1h"},
    ])
    for _ in range(3):
        r = get(http, m, "/api/x")
        assert cs(r) == BYPASS_RULE
    assert len(seen(so, "/api/x")) == 3           # cacheable by its headers, bypassed by rule
    r = get(http, m, "/static/a.txt")
    assert cs(r) == MISS_STORED                    # no-store ignored by "everything"
    r = get(http, m, "/static/a.txt")
    assert is_hit(r) and 3590 <= ttl(r) <= 3600    # the edge TTL, not the origin's
    assert r.headers["Cache-Control"] == "no-store"  # the client still sees the origin's
    assert len(seen(so, "/static/a.txt")) == 1


def test_everything_never_stores_set_cookie(moat_factory, so, site, http):
    site.route("/s", [("Set-Cookie", "sid=1")])
    m = start_rules(moat_factory, so, [{"cache": "everything"}])
    get(http, m, "/s")
    assert not is_hit(get(http, m, "/s"))
    assert len(seen(so, "/s")) == 2


def test_set_cookie_strip_stores_without_the_cookie(moat_factory, so, site, http):
    site.route("/sc", [("Cache-Control", "max-age=60"), ("Set-Cookie", "visitor=abc")])
    site.route("/other", [("Cache-Control", "max-age=60"), ("Set-Cookie", "visitor=abc")])
    m = start_rules(moat_factory, so, [{"match": {"path": "/sc"}, "set_cookie": "strip"}])
    r = get(http, m, "/sc")
    assert cs(r) == MISS_STORED and r.headers.get("Set-Cookie") == "visitor=abc"
    r = get(http, m, "/sc")
    assert is_hit(r) and "Set-Cookie" not in r.headers, r.headers
    assert len(seen(so, "/sc")) == 1
    # Without the rule, Set-Cookie still keeps the answer out of the cache.
    get(http, m, "/other")
    r = get(http, m, "/other")
    assert not is_hit(r) and r.headers.get("Set-Cookie") == "visitor=abc"
    assert len(seen(so, "/other")) == 2


def test_edge_ttl_overrides_origin_max_age(moat_factory, so, site, http):
    site.route("/e", [("Cache-Control", "max-age=1")])
    m = start_rules(moat_factory, so, [{"match": {"path": "/e"}, "edge_ttl": "1m"}])
    assert cs(get(http, m, "/e")) == MISS_STORED
    time.sleep(2.2)
    r = get(http, m, "/e")
    assert is_hit(r) and ttl(r) <= 58
    assert len(seen(so, "/e")) == 1


def test_edge_ttl_still_applies_after_a_304(moat_factory, so, site, http):
    # The head refreshed by a 304 gets the rule's lifetime too, not the 304's max-age.
    site.route("/e304", [("Cache-Control", "max-age=100"), ("ETag", '"t1"')], body="b\n")
    m = start_rules(moat_factory, so, [{"match": {"path": "/e304"}, "edge_ttl": "2s"}])
    assert cs(get(http, m, "/e304")) == MISS_STORED
    time.sleep(2.3)

    def cond(req, origin):
        from origins import response
        if req.header("If-None-Match") == '"t1"':
            return response(304, b"", [("ETag", '"t1"'), ("Cache-Control", "max-age=100")],
                            content_length=False)
        return response(200, b"changed\n", [("Cache-Control", "max-age=100")])
    so.handler = cond
    r = get(http, m, "/e304")
    assert cs(r) == ["moat", "fwd=stale", "fwd-status=304", "stored"] and r.text == "b\n"
    r = get(http, m, "/e304")
    assert is_hit(r) and ttl(r) <= 2, cs(r)
    assert len(so.requests) == 2


def test_browser_ttl_rewrites_cache_control_on_miss_and_hit(moat_factory, so, site, http):
    site.route("/b.html", [("Cache-Control", "public, max-age=60")])
    m = start_rules(moat_factory, so, [{"match": {"path": "*.html"}, "browser_ttl": "1h"}])
    r1 = get(http, m, "/b.html")
    r2 = get(http, m, "/b.html")
    assert cs(r1) == MISS_STORED and is_hit(r2)
    for r in (r1, r2):
        assert r.headers["Cache-Control"] == "max-age=3600", r.headers
    assert 58 <= ttl(r2) <= 60                     # moat's own freshness is the origin's


@pytest.mark.parametrize("mode,urls,shared", [
    ("ignore", ["/q?a=1", "/q?a=2", "/q"], True),
    ("sort", ["/q?b=2&a=1", "/q?a=1&b=2"], True),
    ("all", ["/q?b=2&a=1", "/q?a=1&b=2"], False),
])
def test_key_query_options(moat_factory, so, site, http, mode, urls, shared):
    m = start_rules(moat_factory, so, [{"match": {"path": "/q"}, "key": {"query": mode}}])
    first = get(http, m, urls[0])
    assert cs(first) == MISS_STORED
    for u in urls[1:]:
        r = get(http, m, u)
        assert is_hit(r) == shared, (u, cs(r))
        if shared:
            assert r.content == first.content
    assert len(so.requests) == (1 if shared else len(urls))


def cached(r):
    """Answered from the cache: a hit, or collapsed onto the object of the request just before
    (it completes when that exchange ends, a moment after its client has the last byte)."""
    return is_hit(r) or cs(r) == COLLAPSED


def raw_get(m, path, lines=()):
    """A GET with exactly these extra header lines (several of one name, empty values)."""
    r = fetch(m.port, path, lines, host="k.example")
    assert r.status == 200, r
    return r


def test_key_headers_split_objects_by_value(moat_factory, so, site, http):
    m = start_rules(moat_factory, so, [
        {"match": {"path": "/k"}, "key": {"headers": ["X-Device", "X-Region"]}}])
    first = {}
    for lines in (["X-Device: mobile"], ["X-Device: desktop"], [], ["X-Device:"],
                  ["X-Device: a", "X-Device: b"], ["X-Device: mobile", "X-Region: eu"]):
        r = raw_get(m, "/k", lines)
        assert cs(r) == MISS_STORED, (lines, cs(r))
        first[tuple(lines)] = r.body
    # The same values again, however spelled: one hit each, the body first stored for them.
    for lines, same_as in ((["x-device: mobile"], ["X-Device: mobile"]),
                           (["X-Device:  desktop "], ["X-Device: desktop"]),
                           (["X-Other: 1"], []),
                           (["X-Device: a,b"], ["X-Device: a", "X-Device: b"]),
                           (["X-Region: eu", "X-Device: mobile"],
                            ["X-Device: mobile", "X-Region: eu"])):
        r = raw_get(m, "/k", lines)
        assert cached(r), (lines, cs(r))
        assert r.body == first[tuple(same_as)], lines
    assert len(seen(so, "/k")) == 6
    # Another path, no key option: the header does not split it.
    assert cs(raw_get(m, "/other", ["X-Device: mobile"])) == MISS_STORED
    assert cached(raw_get(m, "/other", ["X-Device: desktop"]))
    assert len(seen(so, "/other")) == 1


def test_key_cookies_split_by_named_cookies_only(moat_factory, so, site, http):
    m = start_rules(moat_factory, so, [{"match": {"path": "/c"}, "key": {"cookies": ["lang"]}}])
    en = raw_get(m, "/c", ["Cookie: lang=en; sid=1"])
    assert cs(en) == MISS_STORED
    r = raw_get(m, "/c", ["Cookie: sid=2; lang=en"])     # another session, same lang
    assert cached(r) and r.body == en.body, (cs(r), r.body, en.body)
    r = raw_get(m, "/c", ["Cookie: sid=3", "Cookie: lang=en"])  # several Cookie lines
    assert cached(r) and r.body == en.body
    assert cs(raw_get(m, "/c", ["Cookie: lang=fr"])) == MISS_STORED
    none = raw_get(m, "/c")
    assert cs(none) == MISS_STORED
    assert cs(raw_get(m, "/c", ["Cookie: lang="])) == MISS_STORED  # empty is not absent
    for lines in (["Cookie: Lang=en"], ["Cookie: sid=4"], ["Cookie: xlang=en"]):
        r = raw_get(m, "/c", lines)                      # no cookie named exactly "lang"
        assert cached(r) and r.body == none.body, lines
    assert cached(raw_get(m, "/c", ["Cookie: lang=fr; a=b"]))
    assert len(seen(so, "/c")) == 4


def test_key_too_long_bypasses(moat_factory, so, site, http):
    m = start_rules(moat_factory, so, [{"key": {"headers": ["X-Big"]}}])
    for _ in range(2):
        assert cs(raw_get(m, "/big", ["X-Big: " + "x" * 1100])) == BYPASS
    assert len(seen(so, "/big")) == 2
    assert cs(raw_get(m, "/big", ["X-Big: small"])) == MISS_STORED
    assert cached(raw_get(m, "/big", ["X-Big: small"]))


def test_purge_url_removes_every_keyed_object_of_that_url(moat_factory, so, site, http):
    m = start_rules(moat_factory, so, [
        {"match": {"path": "/p*"}, "key": {"headers": ["X-Device"], "cookies": ["lang"]}}])
    variants = (["X-Device: mobile"], ["X-Device: desktop", "Cookie: lang=fr"], [])
    for path in ("/p", "/p2", "/p?x=1"):
        for lines in variants:
            assert cs(raw_get(m, path, lines)) == MISS_STORED, (path, lines)
    assert purged(m, {"url": "http://k.example/p"}) == 3
    for lines in variants:
        assert cs(raw_get(m, "/p", lines)) == MISS_STORED, lines
        assert cached(raw_get(m, "/p2", lines)), lines       # other URLs keep theirs
        assert cached(raw_get(m, "/p?x=1", lines)), lines
    assert len(seen(so, "/p")) == 6 and len(seen(so, "/p2")) == 3
    # A soft purge reaches them too: each is refetched once.
    assert purged(m, {"url": "http://k.example/p2", "soft": True}) == 3
    for lines in variants:
        assert not cached(raw_get(m, "/p2", lines)), lines
    assert len(seen(so, "/p2")) == 6


def test_unsafe_method_invalidates_own_keyed_object(moat_factory, so, site, http):
    m = start_rules(moat_factory, so, [{"match": {"path": "/inv"},
                                        "key": {"headers": ["X-Device"]}}])
    for lines in (["X-Device: mobile"], ["X-Device: desktop"], []):
        assert cs(raw_get(m, "/inv", lines)) == MISS_STORED
    r = fetch(m.port, "/inv", ["X-Device: mobile"], method="POST", host="k.example")
    assert r.status == 200
    assert cs(raw_get(m, "/inv", ["X-Device: mobile"])) == MISS_STORED  # its own object
    # Objects keyed with other values (an absent field is a value) stay until a purge
    # (docs/cache.md says why).
    assert cached(raw_get(m, "/inv", ["X-Device: desktop"]))
    assert cached(raw_get(m, "/inv"))
    assert len(seen(so, "/inv", method="GET")) == 4


def test_origin_no_cache_ignore_serves_hits_where_respect_revalidates(moat_factory, so, site,
                                                                      http):
    for path in ("/ign", "/resp", "/ign-tf"):
        site.route(path, [("Cache-Control", 'max-age=60, no-cache="Set-Cookie"'),
                          ("ETag", '"v1"')])
    site.route("/ign-tf", [("Moat-Cache-Control", "max-age=60, no-cache"), ("ETag", '"v1"')])
    site.route("/ign-ns", [("Cache-Control", "max-age=60, no-cache, no-store")])
    m = start_rules(moat_factory, so, [
        {"match": {"path": "/ign*"}, "origin_no_cache": "ignore"},
        {"match": {"path": "/resp"}, "origin_no_cache": "respect"}])
    for path in ("/ign", "/ign-tf", "/resp"):
        first = get(http, m, path)
        assert cs(first) == MISS_STORED, path
    for path in ("/ign", "/ign-tf"):
        for _ in range(3):
            r = get(http, m, path)
            assert is_hit(r) and 55 <= ttl(r) <= 60, (path, cs(r))
        assert len(seen(so, path)) == 1, path
    assert "no-cache" in get(http, m, "/ign").headers["Cache-Control"]  # clients still see it
    for i in range(3):                                 # respect: checked before every use
        r = get(http, m, "/resp")
        assert not is_hit(r), cs(r)
    reqs = seen(so, "/resp")
    assert len(reqs) == 4
    assert all(q.header("If-None-Match") == '"v1"' for q in reqs[1:])
    # no-store still wins over "ignore".
    for _ in range(2):
        assert not is_hit(get(http, m, "/ign-ns"))
    assert len(seen(so, "/ign-ns")) == 2


def test_origin_no_cache_ignore_survives_a_304(moat_factory, so, site, http):
    def origin(req, o):
        from origins import response
        # max-age=3, not 1: the origin's Date has whole seconds, so a copy can be almost a
        # second old when stored, and under ASan on a busy machine a max-age=1 copy was
        # already stale at the next request (seen in CI)
        hdrs = [("Cache-Control", "max-age=3, no-cache"), ("ETag", '"v1"')]
        if req.header("If-None-Match") == '"v1"':
            return response(304, b"", hdrs, content_length=False)
        return response(200, b"the body\n", hdrs)
    so.handler = origin
    m = start_rules(moat_factory, so, [{"origin_no_cache": "ignore"}])
    assert cs(get(http, m, "/r304")) == MISS_STORED
    assert is_hit(get(http, m, "/r304"))
    time.sleep(4.2)
    r = get(http, m, "/r304")
    assert cs(r) == ["moat", "fwd=stale", "fwd-status=304", "stored"]
    r = get(http, m, "/r304")                           # the 304's no-cache is ignored too
    assert is_hit(r) and r.content == b"the body\n", cs(r)
    assert len(seen(so, "/r304")) == 2


def test_match_on_method_query_header_cookie(moat_factory, so, site, http):
    m = start_rules(moat_factory, so, [
        {"match": {"query": "preview"}, "cache": "bypass"},
        {"match": {"header": "X-Debug"}, "cache": "bypass"},
        {"match": {"cookie": "session"}, "cache": "bypass"},
        {"match": {"methods": ["HEAD"]}, "cache": "bypass"},
    ])
    assert cs(get(http, m, "/m?preview")) == BYPASS_RULE
    assert cs(get(http, m, "/m?x=1&preview=1")) == BYPASS_RULE
    assert cs(get(http, m, "/m?previewx=1")) == MISS_STORED        # a different parameter
    assert cs(get(http, m, "/m", headers={"X-Debug": "1"})) == BYPASS_RULE
    assert cs(get(http, m, "/m", headers={"Cookie": "a=1; session=xyz"})) == BYPASS_RULE
    assert cs(get(http, m, "/m", headers={"Cookie": "sessionid=xyz"})) == MISS_STORED
    r = http.head(m.url("/m"), timeout=10)
    assert cs(r) == BYPASS_RULE
    assert is_hit(get(http, m, "/m"))


def test_rule_stale_if_error(moat_factory, so, site, http):
    site.route("/sie", [("Cache-Control", "max-age=1")])
    m = start_rules(moat_factory, so, [{"match": {"path": "/sie"}, "stale_if_error": "1h"}])
    first = get(http, m, "/sie")
    assert cs(first) == MISS_STORED
    time.sleep(2.2)
    so.stop()
    r = get(http, m, "/sie")
    assert r.status_code == 200 and r.content == first.content
    assert cs(r) == ["moat", "hit", "detail=stale-if-error"]


def test_static_types_get_a_default_ttl_in_file_mode(moat_factory, so, site, http):
    site.route("/app.css", [])      # no freshness information at all
    site.route("/page", [])
    m = moat_factory(so, admin=True, cache={"static_ttl": "10m"})
    assert cs(get(http, m, "/app.css")) == MISS_STORED
    r = get(http, m, "/app.css")
    assert is_hit(r) and 590 <= ttl(r) <= 600
    assert cs(get(http, m, "/page")) == MISS       # not a static type: the origin decides
    site.route("/nostore.js", [("Cache-Control", "no-store")])
    get(http, m, "/nostore.js")
    assert not is_hit(get(http, m, "/nostore.js"))  # the origin's no-store is obeyed


def test_quick_mode_has_no_static_default(moat_factory, so, site, http, tmp_path):
    import subprocess
    from conftest import MOAT_BIN, free_port, wait_port
    site.route("/app.css", [])
    port = free_port()
    p = subprocess.Popen([MOAT_BIN, "--origin", f"http://{so.addr}", "--listen",
                          f"127.0.0.1:{port}", "--workers", "1"], stderr=subprocess.DEVNULL)
    try:
        assert wait_port(port)
        url = f"http://127.0.0.1:{port}/app.css"
        r1 = http.get(url, timeout=10)
        r2 = http.get(url, timeout=10)
        assert cs(r1) == MISS and not is_hit(r2)
        assert len(seen(so, "/app.css")) == 2
    finally:
        p.terminate()
        p.wait(10)


def test_bad_rules_are_refused_with_position(moat_factory, so, tmp_path):
    import subprocess
    from conftest import MOAT_BIN
    f = tmp_path / "bad.yaml"
    f.write_text('pools: {main: {origins: ["127.0.0.1:1"]}}\n'
                 'sites:\n'
                 '  - hosts: ["*"]\n'
                 '    pool: main\n'
                 '    rules:\n'
                 '      - match: { methods: [FETCH] }\n')
    r = subprocess.run([MOAT_BIN, "-t", "-c", str(f)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith(f"{f}:6:28: sites[0].rules[0].match.methods"), r.stderr
