"""tlsclient.py: TLS clients for the end-to-end tests, all connecting to 127.0.0.1 whatever
name they present (SNI, Host, certificate check).

    context(ca=..., cert=, key=, versions=, ciphers=, alpn=, legacy=)   an ssl.SSLContext
    TLSClient(port, "shop.test", ca=pki.ca)      rawhttp.Client over TLS: send, read_response
        .session / .session_reused / .version / .cipher / .alpn / .peer() (cert_info dict)
    handshake(port, "shop.test", ...) -> Hello   one handshake, its facts or the error
    resumption(port, "shop.test", n, ...)        one full handshake, then n reconnects with
                                                  that saved session: list of session_reused
    s_client(port, "shop.test", sigalgs=..., tls="1.3", ...) -> Hello
                                                  the same through `openssl s_client`, for
                                                  what Python's ssl cannot ask for (sigalgs)
    https_session(ca) -> requests.Session          https://shop.test:PORT/ works, on 127.0.0.1
    cert_info(...) (from pki.py)                   SAN, key type, serial of a certificate
"""

import re
import socket
import ssl
import subprocess
import time
import warnings

import requests
import urllib3
from requests.adapters import HTTPAdapter

from pki import cert_info
from rawhttp import Client, ClosedError

LOOPBACK = "127.0.0.1"

VERSIONS = {"1": ssl.TLSVersion.TLSv1, "1.0": ssl.TLSVersion.TLSv1,
            "1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2,
            "1.3": ssl.TLSVersion.TLSv1_3}


def context(ca=None, cert=None, key=None, version=None, ciphers=None, alpn=None,
            legacy=False, verify=True, tickets=True):
    """A client SSLContext. <ca>: the CA file to verify against (None with verify: the
    system store). <version>: "1.0" .. "1.3" pins one protocol version. <legacy>: allow what
    Debian's OpenSSL refuses by default (TLS 1.0 / 1.1, SHA-1), so a refusal seen by the test
    comes from the server, not from this client. <ciphers>: the TLS 1.2 cipher list."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if legacy:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if ciphers:
        ctx.set_ciphers(ciphers + (":@SECLEVEL=0" if legacy else ""))
    if version:
        v = VERSIONS[version]
        with warnings.catch_warnings():  # TLS 1.0 / 1.1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = v
            ctx.maximum_version = v
    if verify:
        if ca:
            ctx.load_verify_locations(ca)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


class TLSClient(Client):
    """rawhttp.Client over TLS to 127.0.0.1:<port>, presenting <server_hostname> (SNI and
    the name checked in the certificate; None: no SNI, and only the chain is checked).
    <session>: an ssl.SSLSession to resume. Raises ssl.SSLError / OSError when the
    handshake fails."""

    def __init__(self, port, server_hostname="shop.test", ctx=None, ca=None, session=None,
                 timeout=5.0, **ctx_kw):
        if ctx is None:
            ctx = context(ca=ca, **ctx_kw)
        if server_hostname is None and ctx.check_hostname:
            ctx.check_hostname = False
        raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
        except BaseException:
            raw.close()
            raise
        self.buf = bytearray()
        self.timeout = timeout
        self.server_hostname = server_hostname

    @property
    def session(self):
        """The session to resume later. In TLS 1.3 the ticket comes after the handshake:
        read a response first."""
        return self.sock.session

    @property
    def session_reused(self):
        return self.sock.session_reused

    @property
    def version(self):
        return self.sock.version()

    @property
    def cipher(self):
        return self.sock.cipher()[0]

    @property
    def alpn(self):
        return self.sock.selected_alpn_protocol()

    def peer(self):
        """The server's leaf certificate: cert_info() dict (names, key_type, bits, serial...)."""
        return cert_info(der=self.sock.getpeercert(binary_form=True))

    def get(self, path="/", host=None, headers=()):
        """One GET on this connection; returns the rawhttp Response."""
        host = host or self.server_hostname or LOOPBACK
        extra = "".join(f"{h}\r\n" for h in headers)
        self.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
        return self.read_response()


class Hello:
    """What one handshake showed: ok, error, version, cipher, alpn, resumed, group,
    peer_sig (s_client only), cert (cert_info dict of the leaf, or None), output (s_client's
    text)."""

    def __init__(self, **kw):
        self.ok = False
        self.error = None
        self.version = self.cipher = self.alpn = self.group = self.peer_sig = None
        self.resumed = False
        self.cert = None
        self.output = ""
        self.verify_ok = None
        self.__dict__.update(kw)

    def __repr__(self):
        return (f"<Hello ok={self.ok} {self.version} {self.cipher} alpn={self.alpn} "
                f"cert={self.cert and (self.cert['names'], self.cert['key_type'])} "
                f"error={self.error}>")


def handshake(port, server_hostname="shop.test", ca=None, request=True, timeout=5.0, **ctx_kw):
    """One TLS connection; returns a Hello (ok=False with error set if it failed). With
    <request>, also sends GET / and reads the answer (Hello.status)."""
    try:
        c = TLSClient(port, server_hostname, ca=ca, timeout=timeout, **ctx_kw)
    except (ssl.SSLError, OSError) as e:
        return Hello(error=repr(e))
    with c:
        h = Hello(ok=True, version=c.version, cipher=c.cipher, alpn=c.alpn,
                  resumed=c.session_reused, cert=c.peer())
        if request:
            # In TLS 1.3 the server checks the client's certificate after the client has
            # finished its handshake: a refusal shows up on the first read.
            try:
                r = c.get("/")
            except (ssl.SSLError, OSError, ClosedError) as e:
                h.ok = False
                h.error = repr(e)
                return h
            h.status = r.status
            h.response = r
    return h


def resumption(port, server_hostname="shop.test", n=20, ctx=None, ca=None, path="/",
               **ctx_kw):
    """A full handshake and a request, then <n> new connections that each offer the session
    saved from the first one and make a request. Returns a list of n session_reused values
    (the first, full, handshake is not in it)."""
    ctx = ctx or context(ca=ca, **ctx_kw)
    with TLSClient(port, server_hostname, ctx=ctx) as c:
        r = c.get(path)
        assert r.status == 200, r
        assert not c.session_reused
        session = c.session
    out = []
    for _ in range(n):
        with TLSClient(port, server_hostname, ctx=ctx, session=session) as c:
            r = c.get(path)
            assert r.status == 200, r
            out.append(c.session_reused)
    return out


def s_client(port, servername="shop.test", tls=None, sigalgs=None, ciphers=None,
             ciphersuites=None, groups=None, alpn=None, ca=None, legacy=False, extra=(),
             timeout=10):
    """`openssl s_client -connect 127.0.0.1:PORT` with the given offer; returns a Hello with
    the negotiated protocol and cipher, the peer's signature type (peer_sig: "ECDSA",
    "RSA-PSS", "RSA"), the temp key group, ALPN, and the leaf certificate (cert_info).
    servername=None sends no SNI. tls: "1.0" .. "1.3" pins the version. legacy: SECLEVEL=0
    so that OpenSSL offers TLS 1.0/1.1 at all."""
    args = ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}"]
    args += ["-servername", servername] if servername else ["-noservername"]
    if tls:
        args.append({"1": "-tls1", "1.0": "-tls1", "1.1": "-tls1_1", "1.2": "-tls1_2",
                     "1.3": "-tls1_3"}[tls])
    if sigalgs:
        args += ["-sigalgs", sigalgs]
    cipher = ciphers or ("DEFAULT" if legacy else None)
    if cipher:
        args += ["-cipher", cipher + (":@SECLEVEL=0" if legacy else "")]
    if ciphersuites:
        args += ["-ciphersuites", ciphersuites]
    if groups:
        args += ["-groups", groups]
    if alpn:
        args += ["-alpn", ",".join(alpn)]
    if ca:
        args += ["-CAfile", ca]
        if servername:
            args += ["-verify_hostname", servername]
    args += list(extra)
    p = subprocess.run(args, input=b"", capture_output=True, timeout=timeout)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    return parse_s_client(out, p.returncode)


def parse_s_client(out, rc=0):
    h = Hello(output=out)
    # The SSL-Session block (Protocol, Cipher) is printed for TLS <= 1.2; for TLS 1.3 only
    # "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384" when stdin ends at once. (In that
    # line, the version of a TLS <= 1.2 cipher is the one that defined the cipher, not the
    # one negotiated: "New, TLSv1.0, ..." on a TLS 1.1 connection.)
    m = re.search(r"^\s*Protocol\s*:\s*(\S+)", out, re.M)
    h.version = m.group(1) if m else None
    m = re.search(r"^\s*Cipher\s*:\s*(\S+)", out, re.M)
    h.cipher = m.group(1) if m else None
    m = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", out, re.M)
    if m and h.version is None:
        h.version, h.cipher = m.group(2), m.group(3)
    if h.version == "(NONE)":
        h.version = None
    if h.cipher in ("0000", "(NONE)"):
        h.cipher = None
    m = re.search(r"Peer signature type: (\S+)", out)
    h.peer_sig = m.group(1) if m else None
    # "Server Temp Key: X25519, 253 bits" / "Server Temp Key: ECDH, prime256v1, 256 bits"
    m = re.search(r"Server Temp Key: (?:ECDH, )?([^,\n]+)", out)
    h.group = m.group(1).strip() if m else None
    h.group = {"prime256v1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(h.group,
                                                                                    h.group)
    m = re.search(r"ALPN protocol: (\S+)", out)
    h.alpn = m.group(1) if m else None
    m = re.search(r"Verify return code: (\d+)", out)
    h.verify_ok = (m.group(1) == "0") if m else None
    h.resumed = bool(re.search(r"^Reused, ", out, re.M))
    m = re.search(r"(-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----)", out, re.S)
    h.cert = cert_info(pem_text=m.group(1) + "\n") if m else None
    h.ok = rc == 0 and h.cipher is not None and h.cert is not None
    if not h.ok:
        errs = re.findall(r"^.*(?:error|alert).*$", out, re.M | re.I)
        h.error = "; ".join(errs[:3]) or f"s_client exit {rc}"
    return h


# --- requests over TLS to 127.0.0.1 under any name ------------------------------------------

class _LoopbackHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self):
        # urllib3 connects to _dns_host and also reads the name for SNI and the certificate
        # check from it (the `host` property): swap it for the connect only
        name, self._dns_host = self._dns_host, LOOPBACK
        try:
            return super()._new_conn()
        finally:
            self._dns_host = name


class _LoopbackHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self):
        # urllib3 connects to _dns_host and also reads the name for SNI and the certificate
        # check from it (the `host` property): swap it for the connect only
        name, self._dns_host = self._dns_host, LOOPBACK
        try:
            return super()._new_conn()
        finally:
            self._dns_host = name


class _LoopbackHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _LoopbackHTTPSConnection


class _LoopbackHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _LoopbackHTTPConnection


class LoopbackAdapter(HTTPAdapter):
    """Connects every URL to 127.0.0.1 (same port), keeping the URL's host for SNI, the
    certificate name check and the Host header, as if /etc/hosts said so."""

    def init_poolmanager(self, *a, **kw):
        super().init_poolmanager(*a, **kw)
        self.poolmanager.pool_classes_by_scheme = {"http": _LoopbackHTTPPool,
                                                   "https": _LoopbackHTTPSPool}


def https_session(ca=None):
    """A requests.Session that resolves every name to 127.0.0.1 and trusts <ca>:
    s.get("https://shop.test:PORT/x") checks the certificate for shop.test against <ca>."""
    s = requests.Session()
    s.trust_env = False
    s.mount("https://", LoopbackAdapter())
    s.mount("http://", LoopbackAdapter())
    if ca:
        s.verify = ca
    return s


def wait_closed(sock, timeout):
    """Seconds until the peer closed <sock> (EOF or reset, any bytes before it ignored), or
    None if it stayed open for <timeout>."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return None
        except (ConnectionResetError, ssl.SSLError, OSError):
            return time.monotonic() - t0
        if not d:
            return time.monotonic() - t0
