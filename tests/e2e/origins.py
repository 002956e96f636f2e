"""origins.py: scripted origin servers for moat's end-to-end tests.

Every origin listens on 127.0.0.1 on a free port, runs one thread per connection, and records
every raw byte it receives per connection, so a test can assert exactly what moat sent (or that
it sent nothing at all). What an origin answers comes from a per-test handler:

    handler(req, origin) -> bytes            send it; keep the connection unless it says close
                          -> None             close the connection without answering
                          -> HANG             answer nothing, keep reading (and recording)
                          -> [step, ...]      bytes to send, float seconds to sleep, CLOSE,
                                              HANG, or Takeover(fn) to own the raw socket

The default handler is a small echo / sized-body site (see `default_handler`).

`TLSOrigin` is the same origin speaking HTTPS (a certificate from pki.py, optionally requiring
a client certificate); each connection's record then also says whether its handshake
succeeded, was resumed, which SNI name and client certificate came with it.
"""

import base64
import hashlib
import os
import socket
import ssl
import struct
import threading
import time
import warnings

CLOSE = object()  # step: close the connection now
HANG = object()  # step: say nothing more, keep reading until the origin stops


class Takeover:
    """Step: hand the raw socket (and bytes already read past the request) to fn(sock, rest)."""

    def __init__(self, fn):
        self.fn = fn


class Request:
    """One request as the origin received it."""

    def __init__(self, method, target, version, headers, body, raw, chunked, conn, index):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list of (name, value) as received
        self.body = body  # decoded payload
        self.raw = raw  # the exact bytes of this request (head + framed body)
        self.chunked = chunked
        self.conn = conn  # the ConnRecord it came on
        self.index = index  # 0 for the first request on its connection

    @property
    def path(self):
        return self.target.split("?", 1)[0]

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_header(self, name):
        return any(k.lower() == name.lower() for k, _ in self.headers)

    def __repr__(self):
        return f"<Request {self.method} {self.target} {self.version} #{self.index}>"


class ConnRecord:
    def __init__(self, n):
        self.n = n
        self.raw = bytearray()
        self.requests = []
        self.nreq = 0  # requests ever received on this connection (survives reset())
        self.closed = threading.Event()
        # TLSOrigin only: how the handshake went
        self.tls = False  # handshake completed
        self.tls_error = None  # why it failed (repr), or None
        self.resumed = None  # session resumed (True / False) once the handshake is done
        self.sni = None  # the server name the client sent, None if none
        self.version = None  # "TLSv1.3", ...
        self.cipher = None
        self.alpn = None
        self.peer_cert = None  # the client certificate (ssl.getpeercert() dict) if any


def response(status=200, body=b"", headers=None, reason=None, version="HTTP/1.1",
             chunked=False, content_length=True):
    """Builds a response. headers: list of (name, value) pairs or a dict."""
    if isinstance(body, str):
        body = body.encode()
    reason = reason if reason is not None else REASONS.get(status, "Whatever")
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if chunked:
        hdrs.append(("Transfer-Encoding", "chunked"))
        framed = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        if content_length and "content-length" not in names:
            hdrs.append(("Content-Length", str(len(body))))
        framed = body
    head = f"{version} {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs) + "\r\n"
    return head.encode("latin-1") + framed


REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
           204: "No Content", 301: "Moved Permanently", 304: "Not Modified",
           400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
           503: "Service Unavailable"}


def default_handler(req, origin):
    """GET /size/N: N bytes; /echo: the request body back, with X-Method/X-Target;
    /status/NNN: that status; /delay/MS: answer after MS milliseconds; anything else:
    "ok NAME TARGET". Every response carries X-Origin: NAME."""
    base = [("X-Origin", origin.name)]
    path = req.path
    if path.startswith("/size/"):
        n = int(path[6:])
        return response(200, pattern(n), base)
    if path.startswith("/echo"):
        return response(200, req.body, base + [("X-Method", req.method), ("X-Target", req.target)])
    if path.startswith("/status/"):
        st = int(path[8:])
        if st in (204, 304) or st < 200:
            return response(st, b"", base, content_length=False)
        return response(st, f"status {st}\n", base)
    if path.startswith("/delay/"):
        return [int(path[7:]) / 1000.0, response(200, f"slow {origin.name}\n", base)]
    if req.method == "HEAD":
        return response(200, b"", base + [("Content-Length", "13")], content_length=False)
    return response(200, f"ok {origin.name} {req.target}\n", base)


def pattern(n):
    """n deterministic bytes (a repeating alphabet) so truncation or reordering shows."""
    unit = b"abcdefghijklmnopqrstuvwxyz0123456789\n"
    return (unit * (n // len(unit) + 1))[:n]


class _ParseError(Exception):
    pass


def _parse_request(buf):
    """Returns (method, target, version, headers, body, consumed, chunked) when buf holds a
    whole request, None when more bytes are needed; raises _ParseError on garbage."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _ParseError(lines[0])
    method, target, version = parts
    headers = []
    for line in lines[1:]:
        if ":" not in line:
            raise _ParseError(line)
        k, v = line.split(":", 1)
        headers.append((k, v.strip(" \t")))
    pos = end + 4
    te = ",".join(v for k, v in headers if k.lower() == "transfer-encoding").lower()
    cl = [v for k, v in headers if k.lower() == "content-length"]
    if "chunked" in te:
        body = bytearray()
        while True:
            le = buf.find(b"\r\n", pos)
            if le < 0:
                return None
            size = int(bytes(buf[pos:le]).split(b";")[0].strip(), 16)
            pos = le + 2
            if size == 0:
                # trailers until an empty line
                while True:
                    le = buf.find(b"\r\n", pos)
                    if le < 0:
                        return None
                    line = buf[pos:le]
                    pos = le + 2
                    if not line:
                        return method, target, version, headers, bytes(body), pos, True
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos:pos + size]
            if buf[pos + size:pos + size + 2] != b"\r\n":
                raise _ParseError("chunk data not followed by CRLF")
            pos += size + 2
    if cl:
        n = int(cl[0])
        if len(buf) < pos + n:
            return None
        return method, target, version, headers, bytes(buf[pos:pos + n]), pos + n, False
    return method, target, version, headers, b"", pos, False


class Origin:
    """A threaded raw-socket HTTP/1.1 origin that records everything it receives."""

    def __init__(self, handler=None, name="origin", port=0, host="127.0.0.1"):
        self.handler = handler or default_handler
        self.name = name
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(128)
        self.lsock.settimeout(0.05)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"{host}:{self.port}"
        self.conns = []
        self.accept_base = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []
        self.socks = []
        self.errors = []
        self.t = threading.Thread(target=self._accept_loop, daemon=True)
        self.t.start()

    # --- what the origin saw -------------------------------------------------------------
    @property
    def accepts(self):
        """Connections accepted since start (or the last reset)."""
        with self.lock:
            return len(self.conns) - self.accept_base

    @property
    def requests(self):
        with self.lock:
            return [r for c in self.conns for r in c.requests]

    def total_bytes(self):
        with self.lock:
            return sum(len(c.raw) for c in self.conns)

    def raw(self):
        with self.lock:
            return b"".join(bytes(c.raw) for c in self.conns)

    def reset(self):
        """Forgets what was received so far. Connections stay open (moat may reuse pooled
        ones), so their records are emptied in place rather than dropped."""
        with self.lock:
            for c in self.conns:
                c.raw = bytearray()
                c.requests = []
            self.accept_base = len(self.conns)

    def wait_requests(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= n:
                return self.requests
            time.sleep(0.01)
        raise AssertionError(f"origin {self.name} saw {len(self.requests)} requests, wanted {n}")

    # --- machinery -----------------------------------------------------------------------
    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                rec = ConnRecord(len(self.conns))
                self.conns.append(rec)
                self.socks.append(s)
            t = threading.Thread(target=self._serve, args=(s, rec), daemon=True)
            self.threads.append(t)
            t.start()

    def _recv(self, s):
        """recv that wakes up to notice stop(); b"" on EOF, None on stop."""
        while not self.stopping.is_set():
            try:
                return s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return b""
        return None

    def _wrap(self, s, rec):
        """The socket to serve <rec> on: <s> itself here; TLSOrigin does its handshake.
        None: the connection is done (closed by the caller)."""
        return s

    def _serve(self, s, rec):
        s = self._wrap(s, rec)
        if s is None:
            rec.closed.set()
            return
        s.settimeout(0.1)
        buf = bytearray()
        hanging = False
        try:
            while True:
                parsed = None
                if not hanging:
                    try:
                        parsed = _parse_request(buf)
                    except (_ParseError, ValueError):
                        hanging = True  # keep recording, answer nothing
                if parsed is None:
                    data = self._recv(s)
                    if not data:
                        return
                    with self.lock:
                        rec.raw += data
                    buf += data
                    continue
                method, target, version, headers, body, used, chunked = parsed
                del_used = bytes(buf[:used])
                del buf[:used]
                with self.lock:
                    req = Request(method, target, version, headers, body, del_used, chunked,
                                  rec, rec.nreq)
                    rec.nreq += 1
                    rec.requests.append(req)
                try:
                    out = self.handler(req, self)
                except Exception as e:  # a broken handler is a test bug: make it visible
                    self.errors.append(repr(e))
                    return
                if out is None:
                    return
                steps = out if isinstance(out, list) else [out]
                for step in steps:
                    if step is CLOSE:
                        return
                    if step is HANG:
                        hanging = True
                    elif isinstance(step, (int, float)):
                        if self.stopping.wait(step):
                            return
                    elif isinstance(step, Takeover):
                        s.settimeout(5)
                        step.fn(s, bytes(buf))
                        return
                    else:
                        # A proxy applies back-pressure: a send may wait for it.
                        s.settimeout(30)
                        s.sendall(step)
                        s.settimeout(0.1)
                last = steps[-1] if steps else b""
                if isinstance(last, (bytes, bytearray)):
                    head = bytes(last).split(b"\r\n\r\n", 1)[0].lower()
                    if b"\r\nconnection: close" in head:
                        return
        except OSError:
            pass
        finally:
            rec.closed.set()
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # The accept loop first: it may be between appending a connection's thread and
        # starting it, and joining a thread not started yet raises.
        self.t.join(2)
        for t in list(self.threads):
            t.join(2)


class TLSOrigin(Origin):
    """An Origin that speaks HTTPS on 127.0.0.1: every accepted connection does a TLS
    handshake first (in its own thread, 5 s at most), then is served exactly like a plain
    one, so handlers, `requests`, `wait_requests` and the byte records work unchanged (the
    records hold the decrypted bytes).

    certs: [(cert_pem, key_pem), ...]: several of different key types (ECDSA and RSA) are
        all loaded, and OpenSSL picks by what the client offers, as a real server would.
    client_ca: trust this CA for client certificates; require_client_cert: refuse a client
        without one (mutual TLS); without it a client certificate is asked for but optional.
    min_version / max_version: ssl.TLSVersion bounds (default TLS 1.2 .. 1.3); legacy=True
        also lowers OpenSSL's security level so that TLS 1.0 / 1.1 can really be spoken
        (Debian's defaults refuse them) -- for checking that a test client does offer them.
    alpn: protocols to accept (e.g. ["http/1.1"]); num_tickets: TLS 1.3 tickets per
        handshake (OpenSSL's default 2); session_tickets=False: no tickets, and since
        Python's server side keeps no session cache, no resumption at all.

    What it saw: `conns[i]` records (ConnRecord: .tls, .tls_error, .resumed, .sni, .version,
    .cipher, .alpn, .peer_cert), and the counters below."""

    def __init__(self, handler=None, name="tls-origin", port=0, certs=(), client_ca=None,
                 require_client_cert=False, min_version=ssl.TLSVersion.TLSv1_2,
                 max_version=None, legacy=False, alpn=None, num_tickets=None,
                 session_tickets=True):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if legacy:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # TLS 1.0 / 1.1 are deprecated: legacy tests
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
        for cert, key in certs:
            ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if num_tickets is not None:
            ctx.num_tickets = num_tickets
        if not session_tickets:
            ctx.options |= ssl.OP_NO_TICKET
        ctx.sni_callback = self._on_sni
        self.ctx = ctx
        self._sni = {}  # id(SSLSocket) -> name, filled during the handshake
        self.tls_errors = []  # handshake failures (not handler errors: tests provoke them)
        super().__init__(handler, name, port)

    def _on_sni(self, sslsock, name, ctx):
        self._sni[id(sslsock)] = name
        self._last_sni = name  # for a handshake that then fails (no SSLSocket to key it by)
        return None

    def _wrap(self, s, rec):
        s.settimeout(5)
        try:
            ss = self.ctx.wrap_socket(s, server_side=True)
        except (ssl.SSLError, OSError) as e:
            rec.tls_error = repr(e)
            with self.lock:
                self.tls_errors.append(repr(e))
                rec.sni, self._last_sni = getattr(self, "_last_sni", None), None
            try:
                s.close()
            except OSError:
                pass
            return None
        with self.lock:
            rec.sni = self._sni.pop(id(ss), None)
            rec.resumed = ss.session_reused
            rec.version = ss.version()
            rec.cipher = ss.cipher()[0] if ss.cipher() else None
            rec.alpn = ss.selected_alpn_protocol()
            rec.peer_cert = ss.getpeercert() or None
            rec.tls = True
            # stop() shuts the sockets down: the SSL socket now owns the descriptor
            self.socks = [ss if x is s else x for x in self.socks]
        return ss

    # --- what the origin saw, TLS ---------------------------------------------------------
    def _tls_conns(self):
        with self.lock:
            return [c for c in self.conns[self.accept_base:] if c.tls]

    @property
    def tls_accepts(self):
        """TLS connections whose handshake completed (since start or the last reset)."""
        return len(self._tls_conns())

    @property
    def resumed(self):
        """How many of those were resumed sessions."""
        return sum(1 for c in self._tls_conns() if c.resumed)

    @property
    def full(self):
        return sum(1 for c in self._tls_conns() if not c.resumed)

    def wait_tls_errors(self, n=1, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.tls_errors) >= n:
                    return list(self.tls_errors)
            time.sleep(0.01)
        raise AssertionError(f"origin {self.name}: {len(self.tls_errors)} TLS handshake "
                             f"failures, wanted {n}")


# --- ready-made behaviours ----------------------------------------------------------------

def slow_handler(delay):
    """Answers every request after <delay> seconds."""
    def h(req, origin):
        return [delay, response(200, f"slow {origin.name}\n", [("X-Origin", origin.name)])]
    return h


def early_hints_handler(req, origin):
    """Sends `103 Early Hints` (a Link to preload), waits 0.2 s, then a cacheable 200: what
    a client must see in that order. /no-store answers with Cache-Control: no-store."""
    cc = "no-store" if req.path == "/no-store" else "public, max-age=60"
    return [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n",
            0.2, response(200, f"final {req.target}\n", [("Cache-Control", cc),
                                                          ("X-Origin", origin.name)])]


def no_date_handler(req, origin):
    """Answers 200 without a Date field (response() never adds one; this handler exists to
    say so where a test depends on it)."""
    return response(200, f"no date {req.target}\n", [("X-Origin", origin.name)])


def silent_handler(req, origin):
    """Accepts, reads the request, never answers."""
    return HANG


def close_reused_handler(req, origin):
    """Answers the first request on each connection normally (keep-alive), and closes the
    connection without answering when a second request arrives on it: a stale pooled
    connection as moat sees it."""
    if req.index == 0:
        return default_handler(req, origin)
    return CLOSE


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(opcode, payload, mask=None, fin=True):
    """Builds one websocket frame; mask: 4 bytes to mask it (client to server) or None."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return hdr + mask + payload
    return hdr + payload


class _Reader:
    def __init__(self, sock, rest=b""):
        self.sock = sock
        self.buf = bytearray(rest)

    def exactly(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(max(65536, n - len(self.buf)))
            if not d:
                raise EOFError("connection closed mid-frame")
            self.buf += d
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def ws_read_frame(reader):
    """Reads one frame from a _Reader; returns (fin, opcode, payload unmasked, was_masked)."""
    b0, b1 = reader.exactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", reader.exactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", reader.exactly(8))[0]
    mask = reader.exactly(4) if b1 & 0x80 else None
    payload = reader.exactly(n)
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return bool(b0 & 0x80), b0 & 0x0F, payload, mask is not None


def ws_handler(req, origin):
    """A websocket echo origin: handshake, then every data frame back unmasked (with a
    1-byte prefix b"M" if the client frame was masked, b"U" if not, so the test can see that
    moat did not touch the masking); a close frame is answered and ends it."""
    if (req.header("Upgrade") or "").lower() != "websocket":
        return default_handler(req, origin)
    key = req.header("Sec-WebSocket-Key", "")
    head = response(101, b"", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                               ("Sec-WebSocket-Accept", ws_accept(key))],
                    content_length=False)

    def echo(sock, rest):
        r = _Reader(sock, rest)
        while True:
            try:
                fin, op, payload, masked = ws_read_frame(r)
            except (EOFError, OSError):
                return
            if op == 0x8:
                sock.sendall(ws_frame(0x8, payload))
                return
            if op == 0x9:
                sock.sendall(ws_frame(0xA, payload))
                continue
            sock.sendall(ws_frame(op, (b"M" if masked else b"U") + payload))

    return [head, Takeover(echo)]


class BulkOrigin:
    """An origin for the 1 GiB tests: GET /bulk/N answers N bytes with Content-Length, sent
    with os.sendfile from a sparse file (zeros, no page-cache cost); any other request has its
    body (Content-Length or chunked) read and counted at recv_into speed, and is answered
    "count=N". Nothing is kept in memory."""

    def __init__(self, sparse_path, size):
        self.path = sparse_path
        with open(sparse_path, "wb") as f:
            f.truncate(size)
        self.size = size
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.05)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.socks = []
        self.received = []  # body byte counts of finished uploads
        self.errors = []
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        s.settimeout(60)
        buf = bytearray()
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                end = buf.find(b"\r\n\r\n")
                head = bytes(buf[:end]).decode("latin-1")
                del buf[:end + 4]
                lines = head.split("\r\n")
                method, target, _ = lines[0].split(" ")
                hdrs = {}
                for line in lines[1:]:
                    k, v = line.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
                if method == "GET" and target.startswith("/bulk/"):
                    n = int(target[6:])
                    s.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
                    with open(self.path, "rb") as f:
                        off = 0
                        s.settimeout(None)
                        while off < n:
                            sent = os.sendfile(s.fileno(), f.fileno(), off % self.size,
                                               min(n - off, self.size - off % self.size))
                            if sent == 0:
                                return
                            off += sent
                        s.settimeout(60)
                    continue
                count = self._read_body(s, buf, hdrs)
                self.received.append(count)
                body = f"count={count}".encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except (OSError, ValueError) as e:
            self.errors.append(repr(e))
        finally:
            s.close()

    def _read_body(self, s, buf, hdrs):
        chunk = bytearray(1 << 20)
        view = memoryview(chunk)
        if "chunked" in hdrs.get("transfer-encoding", "").lower():
            total = 0
            while True:
                while b"\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        raise ValueError("EOF in chunk size")
                    buf += d
                le = buf.find(b"\r\n")
                size = int(bytes(buf[:le]).split(b";")[0], 16)
                del buf[:le + 2]
                if size == 0:
                    while True:
                        while b"\r\n" not in buf:
                            d = s.recv(65536)
                            if not d:
                                raise ValueError("EOF in trailers")
                            buf += d
                        le = buf.find(b"\r\n")
                        del buf[:le + 2]
                        if le == 0:
                            return total
                need = size + 2
                take = min(need, len(buf))
                del buf[:take]
                need -= take
                while need > 2:
                    got = s.recv_into(view, min(need - 2, len(chunk)))
                    if not got:
                        raise ValueError("EOF in chunk")
                    need -= got
                while need > 0:
                    d = s.recv(need)
                    if not d:
                        raise ValueError("EOF in chunk CRLF")
                    buf += d
                    take = min(need, len(buf))
                    del buf[:take]
                    need -= take
                total += size
        n = int(hdrs.get("content-length", "0"))
        take = min(n, len(buf))
        del buf[:take]
        left = n - take
        while left:
            got = s.recv_into(view, min(left, len(chunk)))
            if not got:
                raise ValueError(f"EOF with {left} body bytes left")
            left -= got
        return n

    def stop(self):
        self.stopping.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.t.join(2)
