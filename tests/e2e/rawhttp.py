"""rawhttp.py: a byte-exact HTTP/1.1 client for tests that must control every byte."""

import socket
import time


class Response:
    def __init__(self, version, status, reason, headers, body, head_raw):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value)
        self.body = body
        self.head_raw = head_raw
        self.chunked = False

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def has_header(self, name):
        return any(k.lower() == name.lower() for k, _ in self.headers)

    def conn_tokens(self):
        return {t.strip().lower() for v in self.header_all("Connection") for t in v.split(",")}

    def __repr__(self):
        return f"<Response {self.status} {self.reason} {len(self.body)}B>"


class ClosedError(Exception):
    pass


class Client:
    """One TCP connection to 127.0.0.1:<port> with a read buffer."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.timeout = timeout

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _fill(self):
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            raise ClosedError(f"connection closed; {len(self.buf)} bytes unread")
        self.buf += d

    def read_until(self, marker):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return out
            self._fill()

    def read_exactly(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_all(self):
        """Everything until the peer closes."""
        while True:
            try:
                self._fill()
            except ClosedError:
                out = bytes(self.buf)
                self.buf.clear()
                return out

    def read_response(self, method="GET", allow_1xx=False):
        """Reads one response. 1xx responses are returned only if allow_1xx, else skipped."""
        while True:
            head = self.read_until(b"\r\n\r\n")
            text = head[:-4].decode("latin-1")
            lines = text.split("\r\n")
            version, status, *reason = lines[0].split(" ", 2)
            status = int(status)
            headers = []
            for line in lines[1:]:
                k, v = line.split(":", 1)
                headers.append((k, v.strip(" \t")))
            resp = Response(version, status, reason[0] if reason else "", headers, b"", head)
            if 100 <= status < 200:
                if allow_1xx or status == 101:
                    return resp
                continue
            break
        if method == "HEAD" or status in (204, 304):
            return resp
        te = ",".join(resp.header_all("Transfer-Encoding")).lower()
        if "chunked" in te:
            resp.chunked = True
            body = bytearray()
            while True:
                line = self.read_until(b"\r\n")
                size = int(line[:-2].split(b";")[0], 16)
                if size == 0:
                    while self.read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                body += self.read_exactly(size)
                assert self.read_exactly(2) == b"\r\n", "chunk data not followed by CRLF"
            resp.body = bytes(body)
        elif resp.has_header("Content-Length"):
            resp.body = self.read_exactly(int(resp.header("Content-Length")))
        else:
            resp.body = self.read_all()
        return resp

    def is_closed(self, timeout=2.0):
        """True if the peer closes (EOF or reset) within <timeout> with no further bytes;
        raises if bytes arrive instead."""
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        if d:
            raise AssertionError(f"expected close, got more bytes: {d[:200]!r}")
        return True


def request(port, data, method="GET", timeout=5.0):
    """Sends <data> on a fresh connection, returns (response, client)."""
    c = Client(port, timeout)
    c.send(data)
    return c.read_response(method), c


def fetch(port, path, lines=(), method="GET", host="localhost", timeout=5.0):
    """One request with exactly the extra header <lines> given ("Name: value" strings: several
    of one name, empty values, odd spacing), on a fresh connection. Returns the response."""
    extra = "".join(f"{line}\r\n" for line in lines)
    body = "Content-Length: 0\r\n" if method in ("POST", "PUT") else ""
    r, c = request(port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}{body}\r\n",
                   method, timeout)
    c.close()
    return r


def wait_port(port, timeout=5.0, proc=None):
    """Polls until 127.0.0.1:<port> accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False
