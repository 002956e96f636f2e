"""test_50_websocket: Upgrade: websocket is tunnelled both ways, byte for byte."""

import base64
import os
import time

from origins import _Reader, ws_accept, ws_frame, ws_handler, ws_read_frame
from rawhttp import Client


def handshake(c, path="/chat"):
    key = base64.b64encode(os.urandom(16)).decode()
    c.send(f"GET {path} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    r = c.read_response()
    return r, key


def test_websocket_echo(moat_factory, origin_factory):
    o = origin_factory(ws_handler, name="ws")
    m = moat_factory(o)
    with Client(m.port) as c:
        r, key = handshake(c)
        assert r.status == 101
        assert r.header("Upgrade", "").lower() == "websocket"
        assert "upgrade" in r.conn_tokens()
        assert r.header("Sec-WebSocket-Accept") == ws_accept(key)
        rd = _Reader(c.sock, bytes(c.buf))
        c.buf.clear()
        # small text frame, masked as a client must
        c.send(ws_frame(0x1, b"hello moat", mask=os.urandom(4)))
        fin, op, payload, masked = ws_read_frame(rd)
        assert (fin, op, masked) == (True, 0x1, False)
        assert payload == b"Mhello moat"  # the origin saw a masked frame
        # 16-bit and 64-bit length frames
        for size in (300, 70_000):
            data = os.urandom(size)
            c.send(ws_frame(0x2, data, mask=os.urandom(4)))
            fin, op, payload, _ = ws_read_frame(rd)
            assert op == 0x2 and payload == b"M" + data
        # ping / pong
        c.send(ws_frame(0x9, b"png", mask=os.urandom(4)))
        assert ws_read_frame(rd)[1:3] == (0xA, b"png")
        # close handshake
        c.send(ws_frame(0x8, b"\x03\xe8bye", mask=os.urandom(4)))
        fin, op, payload, _ = ws_read_frame(rd)
        assert op == 0x8 and payload == b"\x03\xe8bye"
    req = o.requests[0]
    assert req.header("Upgrade", "").lower() == "websocket"
    assert "upgrade" in req.header("Connection", "").lower()
    assert req.header("Sec-WebSocket-Key") == key
    # The access log counts what went to the client (the 101 head and the echoed frames,
    # about 70 KB), not also what the client sent (as much again).
    line = m.access_lines(1)[0]
    assert line["status"] == 101
    sent = len(r.head_raw) + 70_000 + 300 + 30 + 40
    assert sent - 200 <= line["bytes"] <= sent + 200, (line["bytes"], sent)


def test_websocket_server_speaks_first_and_idle_tunnel(moat_factory, origin_factory):
    """Bytes from the origin are relayed without waiting for the client, and a tunnel idle
    for a while stays up."""
    from origins import Takeover, response

    def h(req, o):
        def push(sock, rest):
            sock.sendall(ws_frame(0x1, b"welcome"))
            rd = _Reader(sock, rest)
            fin, op, payload, masked = ws_read_frame(rd)
            sock.sendall(ws_frame(0x1, b"got " + payload))
            time.sleep(0.5)
        return [response(101, b"", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                    ("Sec-WebSocket-Accept",
                                     ws_accept(req.header("Sec-WebSocket-Key")))],
                         content_length=False), Takeover(push)]
    o = origin_factory(h)
    m = moat_factory(o)
    with Client(m.port) as c:
        r, _ = handshake(c)
        assert r.status == 101
        rd = _Reader(c.sock, bytes(c.buf))
        assert ws_read_frame(rd)[2] == b"welcome"
        time.sleep(0.3)
        c.send(ws_frame(0x1, b"late", mask=b"\x01\x02\x03\x04"))
        assert ws_read_frame(rd)[2] == b"got late"


def test_upgrade_declined_by_origin(moat, origin):
    """The default origin answers an upgrade request with a plain 200: the connection stays
    HTTP and keeps working."""
    with Client(moat.port) as c:
        r, _ = handshake(c, "/plain")
        assert r.status == 200
        assert r.body == b"ok main /plain\n"
        c.send("GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response().body == b"ok main /next\n"


def test_client_close_ends_origin_side(moat_factory, origin_factory):
    o = origin_factory(ws_handler)
    m = moat_factory(o)
    c = Client(m.port)
    r, _ = handshake(c)
    assert r.status == 101
    c.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not o.conns[0].closed.is_set():
        time.sleep(0.02)
    assert o.conns[0].closed.is_set(), "origin side of the tunnel left open after client close"


def test_only_allowed_upgrade_tokens_go_to_the_origin(moat_factory, origin_factory):
    """`Upgrade: h2c, websocket` (h2c smuggling behind an allowed token): the origin is sent
    only websocket, so it cannot switch to h2c; the tunnel is websocket's."""
    o = origin_factory(ws_handler, name="ws")
    m = moat_factory(o)
    with Client(m.port) as c:
        key = base64.b64encode(os.urandom(16)).decode()
        c.send(f"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, websocket\r\n"
               f"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        r = c.read_response()
        assert r.status == 101 and r.header("Upgrade", "").lower() == "websocket"
    req = o.requests[0]
    assert req.header_all("Upgrade") == ["websocket"], req.headers
    assert b"h2c" not in req.raw.lower() and not req.has_header("HTTP2-Settings")


def test_101_to_a_protocol_not_asked_is_refused(moat_factory, origin_factory):
    """An origin that answers a websocket upgrade by switching to h2c gets no tunnel: 502."""
    o = origin_factory(lambda req, o: [b"HTTP/1.1 101 Switching Protocols\r\n"
                                       b"Upgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 0.5])
    m = moat_factory(o)
    with Client(m.port) as c:
        r, _ = handshake(c)
        assert r.status == 502, r.head_raw
