"""Cache: Vary. The primary key holds an index (the Vary fields); each combination of the
named request fields is its own object, collapsed and purged like any other."""
import threading

from test_80_cache import MISS_STORED, cs, get, is_hit, purged, seen, start, site, so  # noqa: F401


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
