"""test_30_bodies: request and response bodies: Content-Length and chunked both ways,
re-framing for HTTP/1.0, streaming without buffering, and 1 GiB each way with flat memory."""

import hashlib
import os
import threading
import time

import pytest

from origins import CLOSE, BulkOrigin
from rawhttp import Client

GiB = 1 << 30
MiB = 1 << 20
RSS_SLACK_KIB = 64 * 1024  # moat may grow by at most this much during a big transfer


def test_content_length_body(moat, origin, http):
    body = os.urandom(100_000)
    r = http.post(moat.url("/echo"), data=body, timeout=10)
    assert r.status_code == 200
    assert r.content == body
    req = origin.requests[0]
    assert req.body == body
    assert req.header("Content-Length") == str(len(body)) or req.chunked


def test_chunked_request_body(moat, origin):
    chunks = [b"hello ", b"chunked ", os.urandom(5000), b"world"]
    payload = b"".join(b"%x;name=val\r\n" % len(c) + c + b"\r\n" for c in chunks)
    payload += b"0\r\nX-Trailer: t\r\n\r\n"
    with Client(moat.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + payload)
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"".join(chunks)
        # the connection is still good after a chunked body
        c.send("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().body == b"ok main /after\n"
    req = origin.requests[0]
    assert req.body == b"".join(chunks)
    te = req.header("Transfer-Encoding")
    cl = req.header("Content-Length")
    assert (te or "").lower() == "chunked" or cl == str(len(req.body)), req.headers
    assert not (te and cl), "origin got both Transfer-Encoding and Content-Length"


def test_chunked_request_dribbled(moat, origin):
    with Client(moat.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"4\r\n", b"wi", b"ki\r\n", b"5\r\npedia\r\n", b"0\r\n", b"\r\n"):
            time.sleep(0.02)
            c.send(part)
        r = c.read_response()
    assert r.status == 200 and r.body == b"wikipedia"


def test_empty_chunked_request(moat, origin):
    with Client(moat.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and r.body == b""
    assert origin.requests[0].body == b""


def chunked_origin(req, o):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: chunky\r\n\r\n"
    return [head, b"5\r\nfirst\r\n", 0.05, b"7;ext=x\r\n second\r\n", 0.05,
            b"6\r\n third\r\n0\r\nX-Trailer: yes\r\n\r\n"]


def test_chunked_response(moat_factory, origin_factory):
    o = origin_factory(chunked_origin)
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"first second third"
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().body == b"first second third"


def test_chunked_response_to_http10_client(moat_factory, origin_factory):
    o = origin_factory(chunked_origin)
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET / HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert not r.chunked, "chunked sent to an HTTP/1.0 client"
        assert r.body == b"first second third"


def test_close_delimited_response(moat_factory, origin_factory):
    """An origin response without Content-Length or chunked ends when the origin closes;
    moat must deliver all of it (re-framed as chunked, or by closing the client)."""
    def h(req, o):
        return [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"part one, ", 0.05,
                b"part two", CLOSE]
    o = origin_factory(h)
    m = moat_factory(o)
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert r.body == b"part one, part two"


def test_large_echo_roundtrip(moat, origin, http):
    body = os.urandom(8 * MiB)
    r = http.post(moat.url("/echo"), data=body, timeout=30)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(body).digest()


def test_response_streams(moat_factory, origin_factory):
    """The first part of a slow response reaches the client before the origin finishes."""
    def h(req, o):
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"a" * 1000, 1.0,
                b"b" * 1000]
    o = origin_factory(h)
    m = moat_factory(o)
    with Client(m.port) as c:
        t0 = time.monotonic()
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        c.read_until(b"\r\n\r\n")
        first = c.read_exactly(1000)
        t_first = time.monotonic() - t0
        rest = c.read_exactly(1000)
        t_all = time.monotonic() - t0
    assert first == b"a" * 1000 and rest == b"b" * 1000
    assert t_first < 0.5, f"first bytes took {t_first:.2f}s: moat buffered the response"
    assert t_all >= 0.9


def test_response_pause_at_full_buffer_is_not_held(moat_factory, origin_factory):
    """A body read that exactly fills moat's buffer is written with MSG_MORE (more is known
    to follow); when the origin then pauses, the bytes the kernel holds back as a partial
    segment must be pushed at once, not after the zero-window probe timer (200 ms or more)."""
    bufsize = 20480  # the head buffer with the default limits.header_bytes (16 KiB + 2 KiB, 4 KiB pages)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    first = bufsize - len(head)

    def h(req, o):
        return [head + b"a" * first, 1.0, b"b" * (100000 - first)]
    o = origin_factory(h)
    m = moat_factory(o)
    with Client(m.port) as c:
        t0 = time.monotonic()
        c.send("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        c.read_until(b"\r\n\r\n")
        got = c.read_exactly(first)
        t_first = time.monotonic() - t0
        rest = c.read_exactly(100000 - first)
    assert got == b"a" * first and rest == b"b" * (100000 - first)
    assert t_first < 0.15, f"the body before the pause took {t_first:.3f}s: held by the kernel"


def test_request_streams(moat, origin):
    """The first part of a slow upload reaches the origin before the client finishes."""
    with Client(moat.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n" + b"a" * 1000)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and b"a" * 1000 not in origin.raw():
            time.sleep(0.01)
        assert b"a" * 1000 in origin.raw(), "moat held back the start of the request body"
        c.send(b"b" * 1000)
        r = c.read_response()
    assert r.body == b"a" * 1000 + b"b" * 1000


class RssWatch:
    """Samples moat's VmRSS every 20 ms in a thread."""

    def __init__(self, m):
        self.m = m
        self.samples = []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                self.samples.append(self.m.rss_kib())
            except (OSError, AssertionError):
                return
            time.sleep(0.02)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.t.join()


@pytest.fixture
def bulk(tmp_path):
    b = BulkOrigin(tmp_path / "sparse.bin", GiB)
    yield b
    b.stop()


def warm_up(m):
    with Client(m.port) as c:
        for _ in range(3):
            c.send("GET /bulk/1000 HTTP/1.1\r\nHost: a\r\n\r\n")
            c.read_response()


def big_moat(moat_factory, bulk):
    return moat_factory(bulk.addr, pools={"main": {"idle_timeout": "30s",
                                                   "first_byte_timeout": "30s"}},
                        timeouts={"send": "30s", "client_body": "30s"})


@pytest.mark.timeout(120)
def test_1gib_download_flat_memory(moat_factory, bulk):
    m = big_moat(moat_factory, bulk)
    warm_up(m)
    base = m.rss_kib()
    buf = bytearray(MiB)
    view = memoryview(buf)
    with RssWatch(m) as w, Client(m.port, timeout=30) as c:
        c.send(f"GET /bulk/{GiB} HTTP/1.1\r\nHost: a\r\n\r\n")
        head = c.read_until(b"\r\n\r\n").decode("latin-1").lower()
        assert head.startswith("http/1.1 200"), head
        assert f"content-length: {GiB}\r\n" in head, head
        got = len(c.buf)
        nonzero = bytes(c.buf).count(0) != len(c.buf)
        c.buf.clear()
        t0 = time.monotonic()
        while got < GiB:
            n = c.sock.recv_into(view, min(MiB, GiB - got))
            assert n, f"moat closed after {got} of {GiB} bytes"
            if buf.count(0, 0, n) != n:
                nonzero = True
            got += n
        secs = time.monotonic() - t0
    assert got == GiB
    assert not nonzero, "body bytes changed in transit"
    peak = max(w.samples)
    assert peak - base < RSS_SLACK_KIB, \
        f"moat RSS grew {(peak - base) // 1024} MiB during a 1 GiB download (base {base} KiB)"
    print(f"1 GiB download in {secs:.2f}s, RSS base {base} KiB peak {peak} KiB")


@pytest.mark.timeout(120)
def test_1gib_upload_flat_memory(moat_factory, bulk, tmp_path):
    m = big_moat(moat_factory, bulk)
    warm_up(m)
    base = m.rss_kib()
    with RssWatch(m) as w, Client(m.port, timeout=30) as c, open(bulk.path, "rb") as f:
        c.send(f"PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {GiB}\r\n\r\n")
        c.sock.settimeout(None)
        off = 0
        t0 = time.monotonic()
        while off < GiB:
            sent = os.sendfile(c.sock.fileno(), f.fileno(), off, GiB - off)
            assert sent, "sendfile wrote nothing"
            off += sent
        c.sock.settimeout(30)
        r = c.read_response()
        secs = time.monotonic() - t0
    assert r.status == 200, r
    assert r.body == f"count={GiB}".encode()
    assert bulk.received == [GiB], bulk.errors
    peak = max(w.samples)
    assert peak - base < RSS_SLACK_KIB, \
        f"moat RSS grew {(peak - base) // 1024} MiB during a 1 GiB upload (base {base} KiB)"
    print(f"1 GiB upload in {secs:.2f}s, RSS base {base} KiB peak {peak} KiB")


@pytest.mark.timeout(120)
def test_256mib_chunked_upload_flat_memory(moat_factory, bulk):
    total = 256 * MiB
    m = big_moat(moat_factory, bulk)
    warm_up(m)
    base = m.rss_kib()
    with RssWatch(m) as w, Client(m.port, timeout=30) as c, open(bulk.path, "rb") as f:
        c.send("POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.sock.settimeout(None)
        off = 0
        while off < total:
            c.sock.sendall(b"%x\r\n" % MiB)
            n = 0
            while n < MiB:
                n += os.sendfile(c.sock.fileno(), f.fileno(), off + n, MiB - n)
            c.sock.sendall(b"\r\n")
            off += MiB
        c.sock.sendall(b"0\r\n\r\n")
        c.sock.settimeout(30)
        r = c.read_response()
    assert r.status == 200
    assert r.body == f"count={total}".encode()
    peak = max(w.samples)
    assert peak - base < RSS_SLACK_KIB, f"moat RSS grew {(peak - base) // 1024} MiB"
