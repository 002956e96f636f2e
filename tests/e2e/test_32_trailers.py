"""test_32_trailers: chunked trailer fields forwarded both ways (origin -> HTTP/1.1 client,
client -> origin), filtered of the fields a trailer must not carry, whole however they are
cut into TCP writes; dropped to an HTTP/1.0 client and from cached objects; keep-alive on both
connections after them; a bad or oversized section refused."""

import time

from rawhttp import Client

# A trailer section with fields moat forwards and fields it must drop (framing, routing,
# state, forwarding): only ALLOWED may come out on the other side, in this order.
SECTION = (b"X-Checksum: sha256=abc\r\n"
           b"Content-Length: 5\r\n"
           b"Host: x\r\n"
           b"Set-Cookie: s=1\r\n"
           b"transfer-encoding: chunked\r\n"
           b"X-Forwarded-For: 203.0.113.9\r\n"
           b"Server-Timing: db;dur=53\r\n"
           b"X-Empty:\r\n")
ALLOWED = b"X-Checksum: sha256=abc\r\nServer-Timing: db;dur=53\r\nX-Empty:\r\n"
BODY = b"hello world"
CHUNKS = b"5\r\nhello\r\n6;ext=1\r\n world\r\n"


def read_chunked_raw(c):
    """Reads one chunked body from <c> after its head. Returns (payload, trailer section
    exactly as sent: the lines after the last-chunk line, without the final CRLF)."""
    body = bytearray()
    while True:
        line = c.read_until(b"\r\n")
        size = int(line[:-2].split(b";")[0], 16)
        if size == 0:
            break
        body += c.read_exactly(size)
        assert c.read_exactly(2) == b"\r\n"
    assert line == b"0\r\n", f"last-chunk line {line!r}"
    section = bytearray()
    while True:
        field = c.read_until(b"\r\n")
        if field == b"\r\n":
            return bytes(body), bytes(section)
        section += field


def read_head(c):
    head = c.read_until(b"\r\n\r\n").decode("latin-1")
    lines = head[:-4].split("\r\n")
    hdrs = [tuple(s.strip() for s in ln.split(":", 1)) for ln in lines[1:]]
    return lines[0], hdrs


def names(hdrs):
    return [k.lower() for k, _ in hdrs]


def trailer_origin(steps=None, extra=b""):
    """An origin answering with a chunked body that ends in SECTION (or in <steps>, a list of
    bytes and sleeps after the head), announcing its trailers in a Trailer field."""
    def h(req, o):
        head = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: X-Checksum, Server-Timing\r\n" + extra + b"\r\n")
        if steps is not None:
            return [head] + steps
        return [head + CHUNKS + b"0\r\n" + SECTION + b"\r\n"]
    return h


def get_with_trailers(moat_factory, origin_factory, steps=None):
    """One GET through a moat in front of trailer_origin(<steps>): (status line, head
    fields, payload, trailer section as the client got them)."""
    m = moat_factory(origin_factory(trailer_origin(steps)))
    with Client(m.port) as c:
        c.send("GET /t HTTP/1.1\r\nHost: a\r\n\r\n")
        status, hdrs = read_head(c)
        body, section = read_chunked_raw(c)
    return status, {k.lower(): v for k, v in hdrs}, body, section


def test_response_trailers_forwarded_filtered(moat_factory, origin_factory):
    status, hdrs, body, section = get_with_trailers(moat_factory, origin_factory)
    assert status == "HTTP/1.1 200 OK"
    assert hdrs["trailer"] == "X-Checksum, Server-Timing"
    assert "chunked" in hdrs["transfer-encoding"]
    assert body == BODY
    assert section == ALLOWED


def test_response_trailers_split_across_writes(moat_factory, origin_factory):
    """The section arrives in pieces (the last-chunk line itself cut, a field cut mid-name
    and between CR and LF): moat waits for all of it, then forwards it in one go."""
    pieces = [CHUNKS, 0.05, b"0", 0.05, b"\r\nX-Chec", 0.05, b"ksum: sha256=abc\r", 0.05,
              b"\nContent-Length: 5\r\nHost: x\r\n", 0.05, b"Server-Timing: db;dur=53\r\n"
              b"X-Empty:\r\n", 0.05, b"\r", 0.05, b"\n"]
    _, _, body, section = get_with_trailers(moat_factory, origin_factory, pieces)
    assert (body, section) == (BODY, ALLOWED)


def test_response_trailers_byte_by_byte(moat_factory, origin_factory):
    steps = [CHUNKS + b"0\r\n"]
    for b in SECTION + b"\r\n":
        steps += [0.002, bytes([b])]
    _, _, body, section = get_with_trailers(moat_factory, origin_factory, steps)
    assert (body, section) == (BODY, ALLOWED)


def test_trailers_without_payload(moat_factory, origin_factory):
    """Head, last chunk and section in one read: the section waits for the head in moat's
    output buffer and follows it."""
    steps = [b"0\r\nX-Checksum: none\r\nHost: x\r\n\r\n"]
    _, _, body, section = get_with_trailers(moat_factory, origin_factory, steps)
    assert (body, section) == (b"", b"X-Checksum: none\r\n")


def test_response_trailers_dropped_for_http10_client(moat_factory, origin_factory):
    o = origin_factory(trailer_origin())
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET /t HTTP/1.0\r\n\r\n")
        status, hdrs = read_head(c)
        rest = c.read_all()  # raw payload, then the connection closes
    assert status.endswith("200 OK")
    assert "trailer" not in names(hdrs) and "transfer-encoding" not in names(hdrs)
    assert rest == BODY


def test_keepalive_after_response_trailers(moat_factory, origin_factory):
    """Two exchanges on one client connection and one origin connection, each ending in
    trailers: the bytes after a section belong to the next message on both sides."""
    o = origin_factory(trailer_origin())
    m = moat_factory(o)
    with Client(m.port) as c:
        for i in range(2):
            c.send(f"GET /t{i} HTTP/1.1\r\nHost: a\r\n\r\n")
            read_head(c)
            assert read_chunked_raw(c) == (BODY, ALLOWED)
        # and a plain request after them, pipelined behind one more with trailers
        c.send("GET /t2 HTTP/1.1\r\nHost: a\r\n\r\nGET /t3 HTTP/1.1\r\nHost: a\r\n\r\n")
        read_head(c)
        assert read_chunked_raw(c) == (BODY, ALLOWED)
        read_head(c)
        assert read_chunked_raw(c) == (BODY, ALLOWED)
    assert [r.target for r in o.requests] == ["/t0", "/t1", "/t2", "/t3"]
    assert o.accepts == 1, "the origin connection was not reused after a trailer section"


def test_response_trailers_bad_section_truncates(moat_factory, origin_factory):
    """obs-fold in an origin's trailers: the client never sees a complete message."""
    o = origin_factory(trailer_origin([CHUNKS + b"0\r\nX-A: 1\r\n folded\r\n\r\n"]))
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET /t HTTP/1.1\r\nHost: a\r\n\r\n")
        read_head(c)
        data = c.read_all()
    assert data.startswith(b"5\r\nhello\r\n"), data
    assert b"X-A" not in data and b"folded" not in data and not data.endswith(b"\r\n\r\n")


def post_chunked(section, path="/echo", extra=""):
    return (f"POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            f"Trailer: X-Checksum\r\n{extra}\r\n").encode() + CHUNKS + b"0\r\n" + section + b"\r\n"


def test_request_trailers_forwarded_filtered(moat, origin):
    with Client(moat.port) as c:
        c.send(post_chunked(SECTION + b"Authorization: Basic eDp5\r\nCookie: c=1\r\n"))
        r = c.read_response()
        assert r.status == 200 and r.body == BODY
        c.send("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")  # keep-alive after the section
        assert c.read_response().body == b"ok main /after\n"
    req = origin.requests[0]
    assert req.body == BODY
    assert req.header("Trailer") == "X-Checksum"
    assert req.raw.endswith(b"\r\n0\r\n" + ALLOWED + b"\r\n"), req.raw[-200:]
    assert origin.requests[1].target == "/after"


def test_request_trailers_dribbled_and_pipelined(moat, origin):
    """The section comes a few bytes at a time, and the next request right behind it in the
    same write as its last bytes."""
    msg = post_chunked(SECTION)
    cut = msg.index(b"\r\n0\r\n") + 5
    with Client(moat.port) as c:
        c.send(msg[:cut])
        rest = msg[cut:]
        for i in range(0, len(rest) - 3, 7):
            time.sleep(0.01)
            c.send(rest[i:i + 7])
        c.send(rest[i + 7:] + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == BODY
        assert c.read_response().body == b"ok main /next\n"
    assert origin.requests[0].raw.endswith(b"\r\n0\r\n" + ALLOWED + b"\r\n")
    assert [r.target for r in origin.requests] == ["/echo", "/next"]


def test_request_without_trailers_unchanged(moat, origin):
    with Client(moat.port) as c:
        c.send(post_chunked(b""))
        assert c.read_response().body == BODY
    assert origin.requests[0].raw.endswith(b"\r\n0\r\n\r\n")


def test_request_trailers_too_large_refused(moat_factory, origin):
    m = moat_factory(origin, limits={"header_bytes": "2KiB", "request_line": "1KiB"})
    big = b"X-Big: " + b"b" * 3000 + b"\r\n"
    with Client(m.port) as c:
        c.send(post_chunked(big))
        r = c.read_response()
        assert r.status == 400, r
        assert c.is_closed()
    assert origin.total_bytes() == 0


def test_request_trailers_bad_late_section_not_forwarded(moat, origin):
    """A section that turns bad after the head went out: the origin gets a truncated
    request (never the bad bytes), the client a 400."""
    with Client(moat.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKS)
        time.sleep(0.1)
        c.send(b"0\r\nX-A: 1\r\n")
        time.sleep(0.1)
        c.send(b"X-B: 2\n\r\n")
        r = c.read_response()
        assert r.status == 400
    time.sleep(0.1)
    raw = origin.raw()
    assert b"X-A" not in raw and b"X-B" not in raw


def test_cached_response_has_no_trailers(moat_factory, origin_factory):
    o = origin_factory(trailer_origin(extra=b"Cache-Control: max-age=60\r\n"))
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET /cached HTTP/1.1\r\nHost: a\r\n\r\n")
        _, hdrs = read_head(c)
        assert "stored" in dict((k.lower(), v) for k, v in hdrs)["cache-status"]
        assert read_chunked_raw(c) == (BODY, ALLOWED)  # the miss streams the origin's trailers
        c.send("GET /cached HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
    assert r.header("Cache-Status").startswith("moat; hit"), r.headers
    assert r.body == BODY
    assert not r.has_header("Trailer")
    # a complete object states its length: no chunked framing, so no room for trailers
    assert r.header("Content-Length") == str(len(BODY)) and not r.chunked
    assert len(o.requests) == 1


def test_large_bodies_with_trailers(origin_factory, moat_factory):
    """Bodies larger than the head buffer go through the big body buffer; their trailers
    still come out whole, both ways."""
    big = bytes(range(256)) * 800  # 200 KiB

    def h(req, o):
        assert req.body == big
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return [head + b"%x\r\n" % len(big) + big + b"\r\n0\r\n" + SECTION + b"\r\n"]
    o = origin_factory(h)
    m = moat_factory(o)
    req = (b"POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" +
           b"%x\r\n" % len(big) + big + b"\r\n0\r\n" + SECTION + b"\r\n")
    with Client(m.port) as c:
        c.send(req)
        read_head(c)
        assert read_chunked_raw(c) == (big, ALLOWED)
    assert o.requests[0].raw.endswith(b"\r\n0\r\n" + ALLOWED + b"\r\n")
