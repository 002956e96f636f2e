"""Cache: Vary. The primary key holds an index (the Vary fields); each combination of the
named request fields is its own object, collapsed and purged like any other. Accept-Encoding
is normalised first (cache.normalize_accept_encoding), so browsers' spellings share variants."""
import threading
import time

from rawhttp import fetch
from test_80_cache import (COLLAPSED, MISS_STORED, cs, get, is_hit, purged, seen,  # noqa: F401
                           start, site, so)


def lang_body(req, n):
    return f"lang={req.header('Accept-Language')} #{n}\n"


def test_variants_by_request_field(moat_factory, so, site, http):
    site.route("/v", [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
               body=lang_body)
    m = start(moat_factory, so)
    en = {"Accept-Language": "en"}
    fr = {"Accept-Language": "fr"}
    r1 = get(http, m, "/v", headers=dict(en))
    assert cs(r1) == MISS_STORED and r1.content.startswith(b"lang=en")
    r2 = get(http, m, "/v", headers=dict(fr))
    assert cs(r2) == MISS_STORED and r2.content.startswith(b"lang=fr")
    for _ in range(2):
        a = get(http, m, "/v", headers=dict(en))
        b = get(http, m, "/v", headers=dict(fr))
        assert is_hit(a) and a.content == r1.content
        assert is_hit(b) and b.content == r2.content
    # No Accept-Language at all is a variant of its own.
    r3 = get(http, m, "/v")
    assert cs(r3) == MISS_STORED and r3.content.startswith(b"lang=None")
    assert is_hit(get(http, m, "/v"))
    assert len(seen(so, "/v")) == 3


def test_vary_collapses_per_variant(moat_factory, so, site, http):
    site.route("/vc", [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
               body=lang_body, delay=0.5)
    m = start(moat_factory, so)
    out = []

    def one(lang):
        out.append((lang, get(http.__class__(), m, "/vc", headers={"Accept-Language": lang})))
    ts = [threading.Thread(target=one, args=(lang,)) for lang in ["en"] * 4 + ["de"] * 4]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for lang, r in out:
        assert r.status_code == 200 and r.content.startswith(f"lang={lang}".encode()), r.content
    # One fetch per variant, however the eight requests interleaved.
    langs = sorted(r.header("Accept-Language") for r in seen(so, "/vc"))
    assert langs == ["de", "en"], langs
    statuses = sorted(";".join(cs(r)[1:]) for _, r in out)
    assert statuses.count("fwd=uri-miss;stored") == 2, statuses
    assert all(s in ("fwd=uri-miss;stored", "fwd=uri-miss;collapsed", "hit;ttl=60",
                     "hit;ttl=59") for s in statuses), statuses


def test_vary_star_not_stored_and_purge_reaches_variants(moat_factory, so, site, http):
    site.route("/star", [("Cache-Control", "max-age=60"), ("Vary", "*")])
    site.route("/p", [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
               body=lang_body)
    m = start(moat_factory, so)
    get(http, m, "/star")
    assert not is_hit(get(http, m, "/star"))
    for lang in ("en", "fr"):
        assert cs(get(http, m, "/p", headers={"Accept-Language": lang})) == MISS_STORED
        assert is_hit(get(http, m, "/p", headers={"Accept-Language": lang}))
    # Purging the URL removes the index: every variant under it becomes unreachable.
    assert purged(m, {"url": m.url("/p")}) == 1
    for lang in ("en", "fr"):
        assert cs(get(http, m, "/p", headers={"Accept-Language": lang})) == MISS_STORED


# --- Accept-Encoding normalisation ------------------------------------------------------------

def cached(r):
    """A hit, or collapsed onto the object of the request just before (see test_84)."""
    return is_hit(r) or cs(r) == COLLAPSED


def ae_body(req, n):
    return f"ae={req.header_all('Accept-Encoding')} #{n}\n"


def ae_site(site, path="/ae"):
    site.route(path, [("Cache-Control", "max-age=60"), ("Vary", "Accept-Encoding")],
               body=ae_body)


def ae_seen(so, path):
    """The Accept-Encoding lines of each request the origin got for <path>."""
    return [r.header_all("Accept-Encoding") for r in seen(so, path)]


def test_accept_encoding_spellings_share_a_variant(moat_factory, so, site, http):
    ae_site(site)
    m = start(moat_factory, so)
    gz_br = fetch(m.port, "/ae", ["Accept-Encoding: gzip, deflate, br"])
    assert cs(gz_br) == MISS_STORED
    for lines in (["Accept-Encoding: br;q=1.0, gzip"], ["Accept-Encoding: GZIP,BR"],
                  ["Accept-Encoding: gzip", "Accept-Encoding: deflate, br"],
                  ["Accept-Encoding: br, gzip;q=0.5, zstd;q=0"],
                  ["Accept-Encoding: \t br , gzip ,"]):
        r = fetch(m.port, "/ae", lines)
        assert cached(r) and r.body == gz_br.body, (lines, cs(r))
    ident = fetch(m.port, "/ae", ["Accept-Encoding: identity"])
    assert cs(ident) == MISS_STORED
    for lines in ([], ["Accept-Encoding:"], ["Accept-Encoding: deflate"],
                  ["Accept-Encoding: gzip;q=0, br;q=0"]):
        r = fetch(m.port, "/ae", lines)                  # nothing moat knows is accepted
        assert cached(r) and r.body == ident.body, (lines, cs(r))
    br = fetch(m.port, "/ae", ["Accept-Encoding: gzip;q=0, br"])
    assert cs(br) == MISS_STORED
    assert cs(fetch(m.port, "/ae", ["Accept-Encoding: zstd, br, gzip"])) == MISS_STORED
    assert cached(fetch(m.port, "/ae", ["Accept-Encoding: *"]))
    # The origin saw one canonical line per variant: what each stored variant answers.
    # (so.requests is grouped by origin connection, and each worker has its own pool: the
    # order across connections is not the order of the requests.)
    assert sorted(ae_seen(so, "/ae")) == sorted([["gzip, br"], ["identity"], ["br"],
                                                 ["gzip, br, zstd"]])
    assert gz_br.body.startswith(b"ae=['gzip, br']")


def test_accept_encoding_normalised_without_vary_too(moat_factory, so, site, http):
    m = start(moat_factory, so)
    fetch(m.port, "/plain", ["Accept-Encoding: deflate, gzip;q=0.9, br;q=0.8, zstd"])
    fetch(m.port, "/plain2")
    assert ae_seen(so, "/plain") == [["gzip, br, zstd"]]
    assert ae_seen(so, "/plain2") == [["identity"]]


def test_accept_encoding_unchanged_when_not_cached(moat_factory, so, site, http):
    ae_site(site)
    ae_site(site, "/bp")
    m = start(moat_factory, so, sites=[{"hosts": ["*"], "pool": "main", "rules": [
        {"match": {"path": "/bp"}, "cache": "bypass"}]}])
    raw = ["Accept-Encoding: br;q=1.0, gzip", "Accept-Encoding: deflate"]
    assert cs(fetch(m.port, "/bp", raw))[1:] == ["fwd=bypass", "detail=rule"]
    assert fetch(m.port, "/ae", raw, method="POST").status == 200
    assert cs(fetch(m.port, "/bp"))[1:] == ["fwd=bypass", "detail=rule"]
    assert sorted(ae_seen(so, "/bp")) == [[], ["br;q=1.0, gzip", "deflate"]]
    assert ae_seen(so, "/ae") == [["br;q=1.0, gzip", "deflate"]]


def test_accept_encoding_normalisation_off(moat_factory, so, site, http):
    ae_site(site)
    m = start(moat_factory, so, cache={"normalize_accept_encoding": False})
    for v in ("gzip, deflate, br", "br;q=1.0, gzip"):
        assert cs(fetch(m.port, "/ae", [f"Accept-Encoding: {v}"])) == MISS_STORED
        assert cached(fetch(m.port, "/ae", [f"Accept-Encoding: {v}"]))
    assert sorted(ae_seen(so, "/ae")) == [["br;q=1.0, gzip"], ["gzip, deflate, br"]]


def test_background_refresh_of_a_variant_asks_with_the_canonical_value(moat_factory, so, site,
                                                                      http):
    site.route("/aeswr", [("Cache-Control", "max-age=1, stale-while-revalidate=30"),
                          ("Vary", "Accept-Encoding")], body=ae_body)
    m = start(moat_factory, so)
    first = fetch(m.port, "/aeswr", ["Accept-Encoding: gzip, deflate, br"])
    assert cs(first) == MISS_STORED
    time.sleep(2.2)
    r = fetch(m.port, "/aeswr", ["Accept-Encoding: br;q=0.9, gzip"])
    assert cs(r) == ["moat", "hit", "detail=stale-while-revalidate"] and r.body == first.body
    so.wait_requests(2, timeout=3)
    # The background copy of the request sent what the variant's key says, like its miss did.
    assert ae_seen(so, "/aeswr") == [["gzip, br"], ["gzip, br"]]
