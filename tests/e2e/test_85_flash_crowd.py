"""test_85_flash_crowd: 1,000 clients ask for one cold URL at once while the origin takes 1 s
to answer: collapsed forwarding must turn that into exactly one origin request, and every
client must get the whole, identical body, about as fast as the single origin fetch.

The clients are non-blocking sockets driven by one selectors loop in this thread, so the
client side costs no thread switches and the wall time measures moat, not Python."""

import resource
import selectors
import socket
import time

import pytest

from conftest import SAN, metric
from origins import pattern, response

N_CLIENTS = 1000
BODY = pattern(64 * 1024)
ORIGIN_DELAY = 1.0
WALL_LIMIT = 2.5 * (3 if SAN else 1)


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == resource.RLIM_INFINITY or soft >= want, f"RLIMIT_NOFILE {soft} < {want}"


def parse(data):
    """A whole response read until close -> (status, {name: value}, decoded body)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete head in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        body = bytearray()
        pos = 0
        while True:
            le = rest.index(b"\r\n", pos)
            n = int(rest[pos:le].split(b";")[0], 16)
            if n == 0:
                break
            body += rest[le + 2:le + 2 + n]
            assert rest[le + 2 + n:le + 4 + n] == b"\r\n", "chunk not followed by CRLF"
            pos = le + 4 + n
        return status, hdrs, bytes(body)
    if "content-length" in hdrs:
        assert len(rest) == int(hdrs["content-length"]), (len(rest), hdrs["content-length"])
    return status, hdrs, rest


def crowd(port, n, request, deadline_s):
    """Opens n connections at once, sends <request> on each, reads each until the server
    closes. Returns (list of raw responses or exception strings, seconds from the first
    connect to the last byte)."""
    sel = selectors.DefaultSelector()
    socks = []
    bufs = {}
    out = [None] * n
    t0 = time.monotonic()
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = s.connect_ex(("127.0.0.1", port))
            assert err in (0, 115), f"connect {i}: errno {err}"  # 115: EINPROGRESS
            socks.append(s)
            bufs[i] = bytearray()
            sel.register(s, selectors.EVENT_WRITE, (i, "connect"))
        pending = n
        deadline = t0 + deadline_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, ev in sel.select(min(left, 0.5)):
                i, state = key.data
                s = key.fileobj
                if state == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        out[i] = f"connect error {err}"
                        sel.unregister(s)
                        pending -= 1
                        continue
                    s.send(request)  # a few dozen bytes: fits the empty send buffer
                    sel.modify(s, selectors.EVENT_READ, (i, "read"))
                    continue
                try:
                    d = s.recv(262144)
                except ConnectionError as e:
                    out[i] = f"recv error {e!r} after {len(bufs[i])} bytes"
                    sel.unregister(s)
                    pending -= 1
                    continue
                if d:
                    bufs[i] += d
                else:
                    out[i] = bytes(bufs[i])
                    sel.unregister(s)
                    pending -= 1
        elapsed = time.monotonic() - t0
        for i in range(n):
            if out[i] is None:
                out[i] = f"timed out with {len(bufs[i])} bytes"
        return out, elapsed
    finally:
        sel.close()
        for s in socks:
            s.close()


@pytest.mark.timeout(60)
def test_flash_crowd_one_origin_request(moat_factory, origin_factory, capsys):
    raise_nofile(4 * N_CLIENTS + 256)  # our sockets, and moat's (it inherits the limit)

    def handler(req, origin):
        return [ORIGIN_DELAY, response(200, BODY, [("Cache-Control", "max-age=60"),
                                                   ("Content-Type", "text/plain")])]

    o = origin_factory(handler, name="slow")
    m = moat_factory(o, admin=True, limits={"connections": 4 * N_CLIENTS},
                     log={"error": "stderr", "level": "warn"})
    before = m.metrics()
    req = b"GET /flash/cold?x=1 HTTP/1.1\r\nHost: crowd.example\r\nConnection: close\r\n\r\n"
    results, elapsed = crowd(m.port, N_CLIENTS, req, 15.0)
    with capsys.disabled():
        print(f"\nflash crowd: {N_CLIENTS} clients, origin {ORIGIN_DELAY:.1f} s, "
              f"{len(BODY)} B body: wall {elapsed:.3f} s")

    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, str)]
    assert not failures, f"{len(failures)} clients failed, e.g. {failures[:5]}"
    kinds = {}
    bad = []
    for i, raw in enumerate(results):
        status, hdrs, body = parse(raw)
        if status != 200 or body != BODY:
            bad.append((i, status, len(body)))
        cs = ";".join(p.strip() for p in hdrs.get("cache-status", "").split(";"))
        kind = "hit" if cs.startswith("moat;hit;") else cs
        kinds[kind] = kinds.get(kind, 0) + 1
    assert not bad, f"{len(bad)} clients got a wrong answer, e.g. {bad[:5]}"

    assert len(o.requests) == 1, f"origin received {len(o.requests)} requests"
    assert o.accepts == 1
    assert o.requests[0].target == "/flash/cold?x=1"

    with capsys.disabled():
        print(f"flash crowd: Cache-Status tally {kinds}")
    assert kinds.get("moat;fwd=uri-miss;stored") == 1, kinds
    assert kinds.get("moat;fwd=uri-miss;collapsed", 0) + kinds.get("hit", 0) == N_CLIENTS - 1, \
        kinds
    after = m.metrics(until=lambda mt: metric(mt, "moat_cache_collapsed_total")
                      - metric(before, "moat_cache_collapsed_total")
                      >= kinds.get("moat;fwd=uri-miss;collapsed", 0))
    assert (metric(after, "moat_cache_collapsed_total") - metric(before, "moat_cache_collapsed_total")
            == kinds.get("moat;fwd=uri-miss;collapsed", 0))

    assert elapsed <= WALL_LIMIT, f"{N_CLIENTS} clients took {elapsed:.3f} s (limit {WALL_LIMIT} s)"
    assert m.alive()
