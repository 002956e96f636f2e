"""test_20_malformed: strict RFC 9112 parsing. Every malformed request gets the exact status,
`Connection: close` and a closed connection, and the origin receives not one byte of it; for a
good request pipelined before a bad one, the origin receives the good one only, framed exactly
as the client framed it (request smuggling cannot get through)."""

import time

import pytest

from conftest import MoatFactory
from origins import Origin
from rawhttp import Client

H = "Host: a\r\n"


def get(extra="", line="GET / HTTP/1.1"):
    return f"{line}\r\n{H}{extra}\r\n"


def post(headers, body=""):
    return f"POST /echo HTTP/1.1\r\n{H}{headers}\r\n{body}"


CASES = [
    # --- request line ---------------------------------------------------------------------
    ("double-space", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("trailing-space", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400),
    ("tab-separator", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("method-not-token", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("method-empty", " / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("target-ctl", "GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("target-del", "GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("target-8bit", "GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("target-asterisk-on-get", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("target-authority-on-get", "GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("target-fragment-less-relative", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("version-lowercase", "GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    ("version-garbage", "GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400),
    ("version-two-digit", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400),
    ("version-2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("version-0.9", "GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505),
    ("version-3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
    ("request-line-too-long", "GET /" + "a" * 9000 + " HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ("bare-lf-request-line", "GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    # --- header fields --------------------------------------------------------------------
    ("bare-lf-header", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    ("bare-lf-end-of-head", "GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("bare-cr-in-header", "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
    ("space-before-colon", get("X-Foo : bar\r\n"), 400),
    ("tab-before-colon", get("X-Foo\t: bar\r\n"), 400),
    ("space-before-colon-host", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("header-name-bad-char", get("X(Foo: bar\r\n"), 400),
    ("header-name-empty", get(": bar\r\n"), 400),
    ("header-no-colon", get("XFoo bar\r\n"), 400),
    ("leading-whitespace-first-field", "GET / HTTP/1.1\r\n X: y\r\nHost: a\r\n\r\n", 400),
    ("obs-fold", get("X-Foo: a\r\n b\r\n"), 400),
    ("obs-fold-tab", get("X-Foo: a\r\n\tb\r\n"), 400),
    ("value-nul", get("X-Foo: a\x00b\r\n"), 400),
    ("value-ctl", get("X-Foo: a\x01b\r\n"), 400),
    ("value-del", get("X-Foo: a\x7fb\r\n"), 400),
    ("value-vt", get("X-Foo: a\x0bb\r\n"), 400),
    # --- Content-Length -------------------------------------------------------------------
    ("cl-not-digits", post("Content-Length: abc\r\n"), 400),
    ("cl-negative", post("Content-Length: -1\r\n"), 400),
    ("cl-plus", post("Content-Length: +5\r\n", "hello"), 400),
    ("cl-hex", post("Content-Length: 0x5\r\n", "hello"), 400),
    ("cl-list", post("Content-Length: 5, 5\r\n", "hello"), 400),
    ("cl-dup-equal", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), 400),
    ("cl-dup-differ", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), 400),
    ("cl-overflow", post("Content-Length: 99999999999999999999999\r\n"), 400),
    ("cl-inner-space", post("Content-Length: 1 0\r\n", "0123456789"), 400),
    ("cl-empty", post("Content-Length: \r\n"), 400),
    # --- Transfer-Encoding ----------------------------------------------------------------
    ("cl-and-te", post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nG"), 400),
    ("te-and-cl", post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "0\r\n\r\n"), 400),
    ("te-on-http10", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-twice", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), 400),
    ("te-chunked-two-fields", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                                   "0\r\n\r\n"), 400),
    # "xchunked" is a transfer coding moat does not know: 501 (RFC 9112 6.1), like gzip.
    ("te-xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), 501),
    ("te-chunked-space-comma", post("Transfer-Encoding: chunked ,x\r\n", "0\r\n\r\n"), 400),
    ("te-chunked-not-last", post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"), 400),
    ("te-chunked-vt", post("Transfer-Encoding: chunked\x0b\r\n", "0\r\n\r\n"), 400),
    ("te-empty", post("Transfer-Encoding: \r\n", "0\r\n\r\n"), 400),
    ("te-gzip", post("Transfer-Encoding: gzip\r\n", "xxxx"), 501),
    ("te-identity", post("Transfer-Encoding: identity\r\n", "xxxx"), 501),
    ("te-gzip-chunked", post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), 501),
    # --- Host -----------------------------------------------------------------------------
    ("host-missing", "GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    ("host-duplicate", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    ("host-duplicate-differ", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("host-with-space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-userinfo", "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    ("host-dup-http10", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # --- chunked request bodies -----------------------------------------------------------
    ("chunk-size-not-hex", post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-too-long", post("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-overflow", post("Transfer-Encoding: chunked\r\n",
                                 "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-bare-lf", post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-leading-space", post("Transfer-Encoding: chunked\r\n",
                                      " 5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", post("Transfer-Encoding: chunked\r\n", "\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-bad-trailer", post("Transfer-Encoding: chunked\r\n",
                               "5\r\nhello\r\n0\r\nno colon here\r\n\r\n"), 400),
    # --- limits and expectations ----------------------------------------------------------
    ("header-bytes-over-limit", get("X-Big: " + "b" * 17000 + "\r\n"), 431),
    ("header-count-over-limit", get("".join(f"X-H{i}: v\r\n" for i in range(101))), 431),
    ("body-over-limit-cl", post("Content-Length: 2000\r\n"), 413),
    ("expect-other", get("Expect: 200-ok\r\n"), 417),
]

SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

PIPELINED = [
    # (id, good first request, expected first body, bad second request, its status,
    #  body the origin must see for the first request)
    ("get-then-space-before-colon", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"ok main /\n",
     "GET /evil HTTP/1.1\r\nHost : a\r\n\r\n", 400, b""),
    ("cl-post-then-cl-te", post("Content-Length: 5\r\n", "hello"), b"hello",
     post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nG"), 400, b"hello"),
    ("chunked-post-then-dup-cl", post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
     b"hello", post("Content-Length: 1\r\nContent-Length: 1\r\n", "X"), 400, b"hello"),
    ("cl-body-looks-like-request",
     post(f"Content-Length: {len(SMUGGLED)}\r\n", SMUGGLED), SMUGGLED.encode(),
     "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501,
     SMUGGLED.encode()),
    ("chunked-ext-trailer-then-bare-lf",
     post("Transfer-Encoding: chunked\r\n", "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"),
     b"abcde", "GET / HTTP/1.1\nHost: a\r\n\r\n", 400, b"abcde"),
    ("get-then-obs-fold", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"ok main /\n",
     "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400, b""),
    ("get-then-version-2", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"ok main /\n",
     "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, b""),
    ("get-then-gzip-te", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"ok main /\n",
     post("Transfer-Encoding: gzip\r\n", "zzzz"), 501, b""),
]


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """One moat and one origin shared by all cases here (starting one per case would cost
    more than the cases themselves); each case resets the origin's records first."""
    origin = Origin(name="main")
    f = MoatFactory(tmp_path_factory.mktemp("strict"))
    m = f(origin, limits={"body_bytes": "1KiB"}, admin=True)
    yield m, origin
    origin.stop()
    reports = f.teardown()
    assert not reports, "sanitizer report from moat:\n" + "\n".join(reports)[-8000:]


def expect_error(c, status):
    r = c.read_response()
    assert r.status == status, f"wanted {status}, got {r.status} {r.reason}: {r.body[:200]!r}"
    assert "close" in r.conn_tokens(), f"error response without Connection: close: {r.headers}"
    assert c.is_closed(), "connection not closed after the error response"
    return r


@pytest.mark.parametrize("raw,status", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_rejected(strict, raw, status):
    m, origin = strict
    assert m.alive(), "moat died in an earlier case:\n" + m.stderr()[-3000:]
    origin.reset()
    with Client(m.port) as c:
        c.send(raw.encode("latin-1"))
        expect_error(c, status)
    time.sleep(0.05)
    assert origin.total_bytes() == 0, f"origin received {origin.raw()[:300]!r}"
    assert origin.accepts == 0, "moat connected to the origin for a rejected request"
    assert m.alive()


@pytest.mark.parametrize("first,body1,second,status,seen_body",
                         [p[1:] for p in PIPELINED], ids=[p[0] for p in PIPELINED])
def test_pipelined_bad_second_request(strict, first, body1, second, status, seen_body):
    m, origin = strict
    assert m.alive()
    origin.reset()
    with Client(m.port) as c:
        c.send((first + second).encode("latin-1"))
        r1 = c.read_response()
        assert r1.status == 200
        assert r1.body == body1
        expect_error(c, status)
    time.sleep(0.05)
    reqs = origin.requests
    assert len(reqs) == 1, f"origin saw {len(reqs)} requests: {origin.raw()!r}"
    assert reqs[0].body == seen_body
    assert origin.raw() == reqs[0].raw, \
        f"origin received bytes past the first request: {origin.raw()[len(reqs[0].raw):]!r}"
    te = (reqs[0].header("Transfer-Encoding") or "").lower()
    cl = reqs[0].header("Content-Length")
    if seen_body:
        assert te == "chunked" or cl == str(len(seen_body)), reqs[0].headers
    else:
        assert not te and cl in (None, "0"), reqs[0].headers


def test_slow_header_split_is_fine(strict):
    """Not malformed: a head dribbled one byte at a time must still be parsed."""
    m, origin = strict
    origin.reset()
    with Client(m.port) as c:
        for b in b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n":
            c.send(bytes([b]))
        r = c.read_response()
    assert r.status == 200 and r.body == b"ok main /slow\n"


def test_leading_empty_lines_are_skipped(strict):
    """RFC 9112 2.2 allows (and moat documents) ignoring CRLFs before a request line."""
    m, origin = strict
    origin.reset()
    with Client(m.port) as c:
        c.send("\r\n\r\nGET /lead HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert origin.requests[0].target == "/lead"


def test_bad_requests_counted(strict):
    m, origin = strict
    before = m.metrics()
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost : a\r\n\r\n")
        expect_error(c, 400)
    from conftest import metric
    after = m.metrics(until=lambda mt: metric(mt, "moat_bad_requests_total") >=
                      metric(before, "moat_bad_requests_total") + 1)
    assert metric(after, "moat_bad_requests_total") == metric(before, "moat_bad_requests_total") + 1
    assert metric(after, "moat_requests_total", **{"class": "4xx"}) >= \
        metric(before, "moat_requests_total", **{"class": "4xx"}) + 1


def test_case_count():
    assert len(CASES) + len(PIPELINED) >= 40
