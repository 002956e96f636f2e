"""test_90_tls: TLS termination: certificates by SNI and by key type, protocol versions,
ALPN, session resumption across workers, certificate reload, http -> https redirect and HSTS,
forwarding and caching per scheme, handshake timeout and failures, upgrades, 103 Early Hints,
Date, and the TLS metrics and /status.

Every moat here listens twice: plain HTTP first (`moat.port`), TLS second (`moat.tls_port`),
with the certificates of the session's test PKI (pki.py): shop.test / www.shop.test as ECDSA
P-256 (first: the default) and RSA-2048, *.api.test, other.test. Clients connect to 127.0.0.1
and present whatever name the test needs (tlsclient.py).

The redirect's port, decided here: `https: {redirect: true}` sends a plain-HTTP request to
https://HOST[:PORT]/target, HOST being the request's host without its port and PORT the port
of moat's first TLS listener, left out when it is 443 (so the usual 80 -> 443 setup gives
https://shop.example/...). A 301 for GET and HEAD, a 308 (method and body kept) for the rest.
"""

import base64
import email.utils
import os
import re
import subprocess
import threading
import time

import pytest

from conftest import MOAT_BIN, free_port, metric
from origins import (_Reader, early_hints_handler, no_date_handler, response, ws_accept,
                     ws_frame, ws_handler, ws_read_frame)
from rawhttp import Client
from tlsclient import TLSClient, context, handshake, resumption, s_client, wait_closed

SHOP = ["shop.test", "www.shop.test"]


def tls_moat(moat_factory, pki, origins, start=True, https=None, site=None, certs=None,
             **over):
    """A moat with a plain and a TLS listener in front of <origins>: site shop.test /
    www.shop.test (with <https> and the keys of <site>), and site "*"; admin on."""
    cfg = moat_factory.tls_config(origins if isinstance(origins, list) else [origins], pki,
                                  certs=certs, **over)
    shop = {"hosts": SHOP, "pool": "main"}
    if https is not None:
        shop["https"] = https
    shop.update(site or {})
    cfg["sites"] = [shop, {"hosts": ["*"], "pool": "main"}]
    return moat_factory(config=cfg, start=start)


def tls_metrics(m, until=None, settle=0.0):
    mt = m.metrics(until=until, settle=settle)
    return {
        "full": metric(mt, "moat_tls_handshakes_total", kind="full"),
        "resumed": metric(mt, "moat_tls_handshakes_total", kind="resumed"),
        "failed": metric(mt, "moat_tls_handshake_failures_total"),
        **{r: metric(mt, "moat_tls_handshake_failures_total", reason=r)
           for r in ("protocol", "no_shared_cipher", "version", "unknown_name", "timeout",
                     "closed", "other")},
    }


def serial_of(m, name, **kw):
    """The serial of the certificate moat presents for SNI <name> (None: no SNI)."""
    h = s_client(m.tls_port, name, **kw)
    assert h.ok, h.output
    return h.cert["serial"]


def partial_client_hello(port):
    """A connection that sent the start of a TLS record (a ClientHello announced as 512
    bytes, 10 of them sent) and then goes silent: moat has it, and waits for the rest."""
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + os.urandom(4))
    return s


# --- certificates: SNI and key type ----------------------------------------------------------

def test_sni_exact_names(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin)
    for name, leaf in (("shop.test", pki.shop_ec), ("www.shop.test", pki.shop_ec),
                       ("WWW.Shop.Test", pki.shop_ec), ("other.test", pki.other)):
        # verified against the root alone: moat sends the intermediate after the leaf
        h = handshake(m.tls_port, name, ca=pki.ca)
        assert h.ok, (name, h)
        assert h.cert["serial"] == leaf.serial, (name, h.cert)
        assert h.status == 200 and h.response.body == b"ok main /\n"
    assert s_client(m.tls_port, "shop.test", ca=pki.ca).verify_ok


def test_sni_wildcard(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin)
    for name in ("a.api.test", "x-y.api.test"):
        h = handshake(m.tls_port, name, ca=pki.ca)
        assert h.ok and h.cert["serial"] == pki.api_wild.serial, (name, h)
    # a wildcard covers one label: neither the bare domain nor two labels deep
    for name in ("api.test", "a.b.api.test"):
        assert serial_of(m, name) == pki.shop_ec.serial, name


def test_sni_unknown_or_absent_gets_default(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin)
    assert serial_of(m, "unknown.test") == pki.shop_ec.serial
    assert serial_of(m, None) == pki.shop_ec.serial
    # without SNI the chain still verifies (the name is not checked)
    h = handshake(m.tls_port, None, ca=pki.ca)
    assert h.ok and h.status == 200 and h.cert["serial"] == pki.shop_ec.serial, h
    # the default is the first certificate listed: list other.test first
    m2 = tls_moat(moat_factory, pki, origin, certs=[pki.other, pki.shop_ec])
    assert serial_of(m2, None) == pki.other.serial
    assert serial_of(m2, "unknown.test") == pki.other.serial
    assert serial_of(m2, "shop.test") == pki.shop_ec.serial


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_ecdsa_or_rsa_by_client_offer(moat_factory, origin, pki, tls):
    m = tls_moat(moat_factory, pki, origin)
    ec = s_client(m.tls_port, "shop.test", tls=tls, ca=pki.ca)
    assert ec.ok and ec.cert["serial"] == pki.shop_ec.serial and ec.peer_sig == "ECDSA", \
        ec.output
    rsa = s_client(m.tls_port, "shop.test", tls=tls, sigalgs="RSA-PSS+SHA256:rsa_pkcs1_sha256",
                   ca=pki.ca)
    assert rsa.ok and rsa.verify_ok, rsa.output
    assert rsa.cert["serial"] == pki.shop_rsa.serial and rsa.cert["bits"] == 2048, rsa.output
    only_ec = s_client(m.tls_port, "shop.test", tls=tls, sigalgs="ECDSA+SHA256")
    assert only_ec.ok and only_ec.cert["serial"] == pki.shop_ec.serial, only_ec.output
    if tls == "1.2":
        # a TLS 1.2 client that only has RSA cipher suites also gets the RSA certificate
        h = handshake(m.tls_port, "shop.test", ca=pki.ca, version="1.2",
                      ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        assert h.ok and h.cert["serial"] == pki.shop_rsa.serial, h


# --- protocols, ALPN ---------------------------------------------------------------------------

def test_old_protocols_refused_tls12_tls13_work(moat_factory, origin, pki):
    """TLS 1.0 and 1.1 are refused (the clients do offer them: test_88 checks that against
    a server that accepts them); TLS 1.2 and 1.3 serve requests."""
    m = tls_moat(moat_factory, pki, origin)
    for v in ("1.0", "1.1"):
        h = handshake(m.tls_port, "shop.test", ca=pki.ca, version=v, legacy=True)
        assert not h.ok, (v, h)
        h = s_client(m.tls_port, "shop.test", tls=v, legacy=True)
        assert not h.ok, (v, h.output)
    for v, name in (("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")):
        h = handshake(m.tls_port, "shop.test", ca=pki.ca, version=v)
        assert h.ok and h.version == name and h.status == 200, (v, h)
    # the default offer of a current client gets TLS 1.3
    assert handshake(m.tls_port, "shop.test", ca=pki.ca).version == "TLSv1.3"
    assert m.alive()


def test_protocols_key_limits_versions(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin, tls={"protocols": ["tls1.3"]})
    assert not handshake(m.tls_port, "shop.test", ca=pki.ca, version="1.2").ok
    assert handshake(m.tls_port, "shop.test", ca=pki.ca, version="1.3").ok


def test_alpn_prefers_h2(moat_factory, origin, pki):
    """A client offering h2 and http/1.1 gets h2 (HTTP/2 itself: test_95_h2.py); one offering
    only http/1.1 gets it, and a client without ALPN is served HTTP/1.1."""
    m = tls_moat(moat_factory, pki, origin)
    h = handshake(m.tls_port, "shop.test", ca=pki.ca, alpn=["h2", "http/1.1"], request=False)
    assert h.ok and h.alpn == "h2", h
    h = handshake(m.tls_port, "shop.test", ca=pki.ca, alpn=["http/1.1"])
    assert h.ok and h.alpn == "http/1.1" and h.status == 200, h
    h = handshake(m.tls_port, "shop.test", ca=pki.ca)
    assert h.ok and h.alpn is None and h.status == 200, h


# --- resumption -----------------------------------------------------------------------------

@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "session_cache"])
def test_resumption_across_workers(moat_factory, origin, pki, tickets):
    """Two workers, each with its own SO_REUSEPORT socket: 30 reconnects land on both (the
    kernel hashes the client's port), and every one resumes the session saved from the first
    handshake: by ticket (keys shared by the workers), or with session_tickets: false by the
    session cache shared by the workers."""
    m = tls_moat(moat_factory, pki, origin, workers=2, tls={"session_tickets": tickets})
    before = tls_metrics(m)
    for v in ("1.3", "1.2"):
        reused = resumption(m.tls_port, "shop.test", 30, ca=pki.ca, version=v)
        assert reused == [True] * 30, (v, reused)
    if not tickets:
        # TLS 1.2 without tickets: resumption by session ID, no ticket was handed out
        with TLSClient(m.tls_port, "shop.test", ca=pki.ca, version="1.2") as c:
            assert c.get("/").status == 200
            assert not c.session.has_ticket
    else:
        with TLSClient(m.tls_port, "shop.test", ca=pki.ca, version="1.2") as c:
            assert c.get("/").status == 200
            assert c.session.has_ticket
    after = tls_metrics(m, until=lambda mt: (
        metric(mt, "moat_tls_handshakes_total", kind="resumed") >= before["resumed"] + 60 and
        metric(mt, "moat_tls_handshakes_total", kind="full") >= before["full"] + 3), settle=0.2)
    assert after["resumed"] - before["resumed"] == 60
    assert after["full"] - before["full"] == 3


# --- reload -----------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_reload_swaps_certificate_under_load(moat_factory, origin, pki):
    new = pki.issue("shop-ec-reloaded", SHOP, "ec")
    m = tls_moat(moat_factory, pki, origin, certs=[pki.shop_ec])
    gen = m.status()["generation"]
    failures, serials = [], []
    stop = threading.Event()
    ctx = context(ca=pki.ca)

    def new_connections(n):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                with TLSClient(m.tls_port, "shop.test", ctx=ctx) as c:
                    serial = int(c.sock.getpeercert()["serialNumber"], 16)
                    r = c.get(f"/new/{n}/{i}")
                    if r.status != 200 or r.body != f"ok main /new/{n}/{i}\n".encode():
                        failures.append((n, i, r.status, r.body[:80]))
                    serials.append(serial)
            except Exception as e:  # any failure is the test's finding
                failures.append((n, i, repr(e)))

    def keepalive():
        try:
            with TLSClient(m.tls_port, "shop.test", ctx=ctx) as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    r = c.get(f"/ka/{i}")
                    if r.status != 200:
                        failures.append(("ka", i, r.status))
        except Exception as e:
            failures.append(("ka", repr(e)))

    threads = [threading.Thread(target=new_connections, args=(n,)) for n in range(2)]
    threads.append(threading.Thread(target=keepalive))
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        cfg = dict(m.config)
        cfg["tls"] = dict(cfg["tls"], certificates=[{"cert": new.cert, "key": new.key}])
        m.reload(cfg)
        deadline = time.monotonic() + 5
        while m.status()["generation"] == gen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert m.status()["generation"] == gen + 1, m.stderr()[-2000:]
        time.sleep(0.7)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not failures, f"{len(failures)} failures during the reload: {failures[:5]}"
    old_sn, new_sn = int(pki.shop_ec.serial, 16), int(new.serial, 16)
    assert set(serials) <= {old_sn, new_sn}
    assert old_sn in serials and new_sn in serials, (len(serials), set(serials))
    # once reloaded, every new connection gets the new certificate
    for _ in range(10):
        assert serial_of(m, "shop.test") == new.serial
    assert m.alive()


@pytest.mark.parametrize("bad", ["mismatched", "missing", "garbage"])
def test_reload_with_bad_key_is_refused(moat_factory, origin, pki, tmp_path, bad):
    m = tls_moat(moat_factory, pki, origin)
    gen = m.status()["generation"]
    key = {"mismatched": pki.other.key, "missing": str(tmp_path / "nope.key"),
           "garbage": str(tmp_path / "garbage.key")}[bad]
    if bad == "garbage":
        (tmp_path / "garbage.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n"
                                              "-----END PRIVATE KEY-----\n")
    cfg = dict(m.config)
    certs = [dict(c) for c in cfg["tls"]["certificates"]]
    certs[0]["key"] = key
    cfg["tls"] = dict(cfg["tls"], certificates=certs)
    m.reload(cfg)
    deadline = time.monotonic() + 5
    while key not in m.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert key in m.stderr(), f"no error naming {key}:\n{m.stderr()[-2000:]}"
    assert m.alive()
    assert m.status()["generation"] == gen
    assert serial_of(m, "shop.test") == pki.shop_ec.serial
    assert handshake(m.tls_port, "shop.test", ca=pki.ca).status == 200


def test_reload_that_drops_the_certificates_is_refused(moat_factory, origin, pki):
    """The listeners stay as started (listen takes a restart), so a reload whose file has no
    TLS listener and no certificates any more is refused: the open TLS listener needs them."""
    m = tls_moat(moat_factory, pki, origin)
    gen = m.status()["generation"]
    cfg = dict(m.config)
    cfg["listen"] = [cfg["listen"][0]]
    cfg.pop("tls")
    m.reload(cfg)
    deadline = time.monotonic() + 5
    while "tls.certificates" not in m.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "tls.certificates" in m.stderr(), m.stderr()[-2000:]
    assert m.status()["generation"] == gen
    assert handshake(m.tls_port, "shop.test", ca=pki.ca).status == 200


def write_tls_config(tmp_path, cert, key, extra=""):
    p = tmp_path / "tls.yaml"
    p.write_text(f"""\
listen:
  - "127.0.0.1:{free_port()}"
  - {{ addr: "127.0.0.1:{free_port()}", tls: true }}
tls:
  certificates:
    - {{ cert: {cert}, key: {key} }}
pools:
  main: {{ origins: ["127.0.0.1:{free_port()}"] }}
sites:
  - hosts: ["*"]
    pool: main
{extra}""")
    return p


def check(path):
    return subprocess.run([MOAT_BIN, "-t", "-c", str(path)], capture_output=True, text=True,
                          timeout=10, stdin=subprocess.DEVNULL)


def test_check_tls_config(tmp_path, pki):
    """moat -t: a good TLS config passes; a key that is not the certificate's fails with the
    file in the message; so do a missing certificate and a TLS listener without one."""
    ok = check(write_tls_config(tmp_path, pki.shop_ec.cert, pki.shop_ec.key))
    assert ok.returncode == 0, ok.stderr
    bad = check(write_tls_config(tmp_path, pki.shop_ec.cert, pki.shop_rsa.key))
    assert bad.returncode == 1, bad
    assert pki.shop_rsa.key in bad.stderr, bad.stderr
    missing = check(write_tls_config(tmp_path, str(tmp_path / "none.pem"), pki.shop_ec.key))
    assert missing.returncode == 1 and str(tmp_path / "none.pem") in missing.stderr, missing
    p = tmp_path / "nocert.yaml"
    p.write_text(f'listen: [{{ addr: "127.0.0.1:{free_port()}", tls: true }}]\n'
                 f'pools: {{ main: {{ origins: ["127.0.0.1:{free_port()}"] }} }}\n'
                 'sites: [{ hosts: ["*"], pool: main }]\n')
    nocert = check(p)
    assert nocert.returncode == 1 and "tls" in nocert.stderr.lower(), nocert.stderr


def test_check_warns_about_site_names_without_a_certificate(tmp_path, pki):
    """moat -t names the sites' hosts that no certificate covers (they would get the default
    certificate): a warning, the check still passes. Exact names and one-label wildcards
    count; a site's own wildcard needs that very wildcard in a certificate."""
    p = write_tls_config(tmp_path, pki.shop_ec.cert, pki.shop_ec.key)
    p.write_text(p.read_text().replace(
        '  - hosts: ["*"]\n',
        '  - hosts: ["shop.test", "www.shop.test", "nope.test", "*.shop.test"]\n'))
    r = check(p)
    assert r.returncode == 0, r
    warned = [l for l in r.stderr.splitlines() if "warning" in l]
    assert any("nope.test" in l for l in warned), r.stderr
    assert any("*.shop.test" in l for l in warned), r.stderr
    assert not any(" shop.test " in l or "www.shop.test" in l for l in warned), r.stderr
    p = write_tls_config(tmp_path, pki.api_wild.cert, pki.api_wild.key)
    p.write_text(p.read_text().replace('  - hosts: ["*"]\n',
                                       '  - hosts: ["a.api.test", "a.b.api.test"]\n'))
    r = check(p)
    warned = [l for l in r.stderr.splitlines() if "warning" in l]
    assert r.returncode == 0 and len(warned) == 1 and "a.b.api.test" in warned[0], r.stderr


def test_check_upgrades_h2c_refused(tmp_path, pki):
    """upgrades: [h2c] is refused at load: it would let a client speak HTTP/2 to the origin
    past every rule moat enforces."""
    p = write_tls_config(tmp_path, pki.shop_ec.cert, pki.shop_ec.key)
    text = p.read_text().replace("    pool: main\n", "    pool: main\n    upgrades: [websocket, h2c]\n")
    p.write_text(text)
    r = check(p)
    line = text.splitlines().index("    upgrades: [websocket, h2c]") + 1
    assert r.returncode == 1, r
    assert re.search(re.escape(str(p)) + rf":{line}:\d+: .*h2c", r.stderr), r.stderr


# --- https: redirect, HSTS ------------------------------------------------------------------

def test_redirect_to_https_and_hsts(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin, https={"redirect": True, "hsts": "365d"})
    want = f"https://shop.test:{m.tls_port}/path/x?q=1&r=%20"
    for method, status in (("GET", 301), ("HEAD", 301), ("POST", 308), ("PUT", 308),
                           ("DELETE", 308)):
        with Client(m.port) as c:
            body = "Content-Length: 3\r\n\r\nabc" if method in ("POST", "PUT") else "\r\n"
            c.send(f"{method} /path/x?q=1&r=%20 HTTP/1.1\r\nHost: shop.test:{m.port}\r\n{body}")
            r = c.read_response(method)
            assert r.status == status, (method, r.status, r.head_raw)
            assert r.header("Location") == want, (method, r.headers)
            assert not r.has_header("Strict-Transport-Security"), r.headers
    # the host without a port, another name of the site
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: WWW.shop.test\r\n\r\n")
        r = c.read_response()
    assert r.status == 301
    assert r.header("Location").lower() == f"https://www.shop.test:{m.tls_port}/"
    assert origin.requests == [], "a redirected request reached the origin"
    # over https: served, with HSTS
    with TLSClient(m.tls_port, "shop.test", ca=pki.ca) as c:
        r = c.get("/path/x?q=1")
        assert r.status == 200 and r.body == b"ok main /path/x?q=1\n"
        assert r.header("Strict-Transport-Security") == "max-age=31536000", r.headers
    # a site without https: no redirect over http, no HSTS over https
    with Client(m.port) as c:
        c.send("GET /p HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and not r.has_header("Strict-Transport-Security")
    with TLSClient(m.tls_port, "other.test", ca=pki.ca) as c:
        r = c.get("/p", host="other.test")
        assert r.status == 200 and not r.has_header("Strict-Transport-Security"), r.headers


def test_https_session_follows_redirect(moat_factory, origin, pki, https):
    """What a browser does: http://shop.test:PORT/a -> 301 -> https://shop.test:TLSPORT/a."""
    m = tls_moat(moat_factory, pki, origin, https={"redirect": True, "hsts": "1d"})
    r = https.get(m.http_url("/a?b=c"), timeout=5)
    assert r.status_code == 200 and r.text == "ok main /a?b=c\n"
    assert [h.status_code for h in r.history] == [301]
    assert r.url == m.https_url("/a?b=c")
    assert r.headers["Strict-Transport-Security"] == "max-age=86400"


# --- forwarding and the cache per scheme ----------------------------------------------------

def test_forwarded_proto_https_reaches_origin(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin)
    with TLSClient(m.tls_port, "shop.test", ca=pki.ca) as c:
        assert c.get("/fw", host=f"shop.test:{m.tls_port}").status == 200
    with Client(m.port) as c:
        c.send("GET /fw HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        assert c.read_response().status == 200
    tls_req, plain_req = origin.requests
    for req, proto in ((tls_req, "https"), (plain_req, "http")):
        assert req.header_all("X-Forwarded-Proto") == [proto], req.headers
        fwd = req.header("Forwarded")
        parts = dict(p.strip().split("=", 1) for p in fwd.split(";"))
        assert parts["proto"] == proto, fwd
        assert parts["for"].strip('"') == "127.0.0.1"
    assert dict(p.split("=", 1) for p in tls_req.header("Forwarded").split(";"))[
        "host"].strip('"') == f"shop.test:{m.tls_port}"


def proto_echo(req, o):
    """A cacheable answer that says which scheme moat fetched it for."""
    return response(200, f"proto={req.header('X-Forwarded-Proto')} {req.target}\n",
                    [("Cache-Control", "public, max-age=60")])


def get_both(m, pki, path, scheme):
    """GET <path> with Host: shop.test (no port: the two listeners' ports would make two
    cache keys by themselves) over http or https."""
    if scheme == "https":
        with TLSClient(m.tls_port, "shop.test", ca=pki.ca) as c:
            return c.get(path, host="shop.test")
    with Client(m.port) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        return c.read_response()


def test_cache_keeps_http_and_https_apart(moat_factory, origin_factory, pki):
    o = origin_factory(proto_echo)
    m = tls_moat(moat_factory, pki, o, https={"same_cache": False})
    r = get_both(m, pki, "/c", "http")
    assert r.body == b"proto=http /c\n"
    r = get_both(m, pki, "/c", "https")
    assert r.body == b"proto=https /c\n", "an https request was answered from the http object"
    assert len(o.requests) == 2
    for scheme in ("https", "http"):
        r = get_both(m, pki, "/c", scheme)
        assert r.body == f"proto={scheme} /c\n".encode()
        assert "hit" in r.header("Cache-Status", ""), r.headers
    assert len(o.requests) == 2


def test_cache_shared_with_same_cache(moat_factory, origin_factory, pki):
    o = origin_factory(proto_echo)
    m = tls_moat(moat_factory, pki, o, https={"same_cache": True})
    assert get_both(m, pki, "/s", "http").body == b"proto=http /s\n"
    r = get_both(m, pki, "/s", "https")
    assert r.body == b"proto=http /s\n" and "hit" in r.header("Cache-Status", ""), r.headers
    assert len(o.requests) == 1


# --- handshake timeout, garbage on the TLS port, failures -----------------------------------

@pytest.mark.timeout(40)
def test_handshake_timeout_closes_silent_connection(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin, tls={"handshake_timeout": "1s"})
    before = tls_metrics(m)
    # started a ClientHello and stopped: closed after the timeout, not before
    s = partial_client_hello(m.tls_port)
    took = wait_closed(s, 6)
    s.close()
    assert took is not None, "a half-sent ClientHello kept its connection open for 6 s"
    assert 0.8 <= took <= 3.5, took
    # said nothing at all: moat only sees it once the kernel hands it over (TCP_DEFER_ACCEPT,
    # about a second), then the same timeout applies
    import socket
    s = socket.create_connection(("127.0.0.1", m.tls_port), timeout=5)
    took = wait_closed(s, 10)
    s.close()
    assert took is not None, "a silent TLS connection was kept open for 10 s"
    after = tls_metrics(m, until=lambda mt: metric(mt, "moat_tls_handshake_failures_total",
                                                  reason="timeout") >= before["timeout"] + 2)
    assert after["timeout"] - before["timeout"] == 2
    assert handshake(m.tls_port, "shop.test", ca=pki.ca).status == 200


def test_plain_http_on_tls_port_is_refused(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin)
    for junk in (b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n",
                 b"SSH-2.0-OpenSSH_9.2\r\n" + bytes(range(256)),
                 b"\x16\x03\x01\x00\x05hello"):
        with Client(m.tls_port) as c:
            c.send(junk)
            got = c.read_all()
        # nothing, a TLS alert, or a 400 that says why: never an answer from the origin
        assert (got == b"" or got[:1] == b"\x15" or got.startswith(b"HTTP/1.1 400")
                or got.startswith(b"HTTP/1.0 400")), got[:200]
    assert origin.requests == []
    assert m.alive()
    assert handshake(m.tls_port, "shop.test", ca=pki.ca).status == 200
    with Client(m.port) as c:
        c.send("GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        assert c.read_response().status == 200


@pytest.mark.timeout(40)
def test_metrics_count_handshakes_and_failures(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin, tls={"handshake_timeout": "1s"})
    b = tls_metrics(m)
    assert resumption(m.tls_port, "shop.test", 3, ca=pki.ca) == [True] * 3
    a = tls_metrics(m, until=lambda mt: metric(mt, "moat_tls_handshakes_total") >=
                    b["full"] + b["resumed"] + 4, settle=0.2)
    assert (a["full"] - b["full"], a["resumed"] - b["resumed"]) == (1, 3), (b, a)

    b = a
    assert not handshake(m.tls_port, "shop.test", ca=pki.ca, version="1.0", legacy=True).ok
    # a TLS 1.2 client with only a cipher without forward secrecy: nothing in common
    assert not handshake(m.tls_port, "shop.test", ca=pki.ca, version="1.2",
                         ciphers="AES128-SHA").ok
    with Client(m.tls_port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        c.read_all()
    s = partial_client_hello(m.tls_port)
    wait_closed(s, 5)
    s.close()
    a = tls_metrics(m, until=lambda mt: metric(mt, "moat_tls_handshake_failures_total") >=
                    b["failed"] + 4, settle=0.2)
    assert a["version"] - b["version"] == 1, (b, a)
    assert a["no_shared_cipher"] - b["no_shared_cipher"] == 1, (b, a)
    assert a["protocol"] - b["protocol"] == 1, (b, a)
    assert a["timeout"] - b["timeout"] == 1, (b, a)
    assert a["failed"] - b["failed"] == 4, (b, a)
    assert (a["full"], a["resumed"]) == (b["full"], b["resumed"])


def find_cert_entries(doc, name):
    """The objects anywhere in <doc> (the /status JSON) with a string value, or a list of
    strings, that holds DNS name <name>: the certificate entries (and maybe a site's)."""
    def holds(v):
        if isinstance(v, str):
            return name in v
        return isinstance(v, list) and any(isinstance(x, str) and name in x for x in v)
    out = []
    if isinstance(doc, dict):
        if any(holds(v) for v in doc.values()):
            out.append(doc)
        for v in doc.values():
            out += find_cert_entries(v, name)
    elif isinstance(doc, list):
        for v in doc:
            out += find_cert_entries(v, name)
    return out


def mentions_expiry(entry, not_after):
    """True if <entry> holds <not_after> as Unix seconds or as a date string."""
    ts = not_after.timestamp()
    day = not_after.strftime("%Y-%m-%d")
    for v in entry.values():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v - ts) < 86400:
            return True
        if isinstance(v, str) and (day in v or not_after.strftime("%b %e") in v):
            return True
    return False


def test_status_lists_certificates(moat_factory, origin, pki):
    m = tls_moat(moat_factory, pki, origin, certs=[pki.shop_ec, pki.api_wild, pki.expired])
    st = m.status()
    for leaf, name in ((pki.shop_ec, "www.shop.test"), (pki.api_wild, "*.api.test"),
                       (pki.expired, "origin.test")):
        entries = find_cert_entries(st, name)
        assert entries, f"/status does not list a certificate for {name}: {st}"
        assert any(mentions_expiry(e, leaf.not_after) for e in entries), \
            f"no expiry {leaf.not_after} for {name} in {entries}"


def test_expired_certificate_is_served_with_a_warning(moat_factory, origin, pki):
    """An expired certificate does not stop moat (refusing to start would take a site down
    over a renewal that is late by an hour); it is logged, with its file."""
    m = tls_moat(moat_factory, pki, origin, certs=[pki.shop_ec, pki.expired])
    deadline = time.monotonic() + 3
    while pki.expired.cert not in m.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [l for l in m.stderr().splitlines() if pki.expired.cert in l]
    assert lines and any("expire" in l.lower() for l in lines), m.stderr()[-2000:]
    assert handshake(m.tls_port, "shop.test", ca=pki.ca).status == 200


# --- upgrades ---------------------------------------------------------------------------------

H2C = ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_h2c_upgrade_not_forwarded(moat_factory, origin, pki, scheme):
    m = tls_moat(moat_factory, pki, origin)
    c = (TLSClient(m.tls_port, "shop.test", ca=pki.ca) if scheme == "https"
         else Client(m.port))
    with c:
        c.send(f"GET /up HTTP/1.1\r\nHost: shop.test\r\n{H2C}\r\n")
        r = c.read_response(allow_1xx=True)
        assert r.status == 200 and r.version == "HTTP/1.1", r.head_raw
        assert r.body == b"ok main /up\n"
        assert not r.has_header("Upgrade")
        c.send("GET /after HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        assert c.read_response().body == b"ok main /after\n"
    req = origin.requests[0]
    for h in ("Upgrade", "HTTP2-Settings"):
        assert not req.has_header(h), req.headers
    assert "upgrade" not in ",".join(req.header_all("Connection")).lower()
    assert b"h2c" not in req.raw.lower()


def ws_handshake(c, path="/chat"):
    key = base64.b64encode(os.urandom(16)).decode()
    c.send(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return c.read_response(), key


def test_websocket_over_tls(moat_factory, origin_factory, pki):
    """wss:// to moat, ws:// from moat to the origin (test_50's echo origin)."""
    o = origin_factory(ws_handler, name="ws")
    m = tls_moat(moat_factory, pki, o)
    with TLSClient(m.tls_port, "shop.test", ca=pki.ca) as c:
        r, key = ws_handshake(c)
        assert r.status == 101 and r.header("Sec-WebSocket-Accept") == ws_accept(key)
        rd = _Reader(c.sock, bytes(c.buf))
        c.buf.clear()
        for size in (10, 300, 70_000):
            data = os.urandom(size)
            c.send(ws_frame(0x2, data, mask=os.urandom(4)))
            fin, op, payload, masked = ws_read_frame(rd)
            assert (op, masked, payload) == (0x2, False, b"M" + data)
        c.send(ws_frame(0x8, b"\x03\xe8bye", mask=os.urandom(4)))
        assert ws_read_frame(rd)[1:3] == (0x8, b"\x03\xe8bye")
    req = o.requests[0]
    assert req.header("Upgrade", "").lower() == "websocket"
    assert req.header("X-Forwarded-Proto") == "https"


def test_upgrades_empty_forwards_no_websocket(moat_factory, origin_factory, pki):
    o = origin_factory(ws_handler, name="ws")
    m = tls_moat(moat_factory, pki, o, site={"upgrades": []})
    with TLSClient(m.tls_port, "shop.test", ca=pki.ca) as c:
        r, _ = ws_handshake(c, "/nows")
        assert r.status == 200 and r.body == b"ok ws /nows\n", r.head_raw
    assert not o.requests[0].has_header("Upgrade")


# --- 103 Early Hints, Date ------------------------------------------------------------------

def client_for(m, pki, scheme):
    return TLSClient(m.tls_port, "shop.test", ca=pki.ca) if scheme == "https" else Client(m.port)


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_early_hints_reach_client_first_and_are_not_cached(moat_factory, origin_factory,
                                                           pki, scheme):
    o = origin_factory(early_hints_handler, name="eh")
    m = tls_moat(moat_factory, pki, o)
    with client_for(m, pki, scheme) as c:
        c.send("GET /eh HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        hint = c.read_response(allow_1xx=True)
        t_hint = time.monotonic()
        assert hint.status == 103, hint.head_raw
        assert hint.header("Link") == "</style.css>; rel=preload; as=style"
        final = c.read_response(allow_1xx=True)
        assert final.status == 200 and final.body == b"final /eh\n", final.head_raw
        # relayed when it came, during the origin's 0.2 s pause, not together with the 200
        assert time.monotonic() - t_hint >= 0.1
        # a hit: the stored response is the 200 (no 103 in front, nothing from the origin)
        c.send("GET /eh HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        hit = c.read_response(allow_1xx=True)
        assert hit.status == 200 and hit.body == b"final /eh\n", hit.head_raw
        assert "hit" in hit.header("Cache-Status", ""), hit.headers
        # not stored at all: 103 then 200 every time
        for _ in range(2):
            c.send("GET /no-store HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            assert c.read_response(allow_1xx=True).status == 103
            assert c.read_response().status == 200
    assert len(o.requests) == 3
    # an HTTP/1.0 client gets no 1xx (RFC 9110 15.2)
    with client_for(m, pki, scheme) as c:
        c.send("GET /no-store HTTP/1.0\r\nHost: shop.test\r\n\r\n")
        r = c.read_response(allow_1xx=True)
        assert r.status == 200, r.head_raw


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_date_added_when_origin_sends_none(moat_factory, origin_factory, pki, scheme):
    o = origin_factory(no_date_handler, name="nd")
    m = tls_moat(moat_factory, pki, o)
    with client_for(m, pki, scheme) as c:
        c.send("GET /d HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and r.body == b"no date /d\n"
    assert not any(k.lower() == "date" for k, _ in o.requests[0].headers)
    dates = r.header_all("Date")
    assert len(dates) == 1, r.headers
    when = email.utils.parsedate_to_datetime(dates[0])
    assert dates[0].endswith(" GMT") and abs(when.timestamp() - time.time()) < 5, dates


def test_session_ticket_keys_survive_reload(moat_factory, origin, pki):
    """Ticket keys live outside the configuration snapshot: a session from before a reload
    resumes after it."""
    m = tls_moat(moat_factory, pki, origin)
    ctx = context(ca=pki.ca)
    with TLSClient(m.tls_port, "shop.test", ctx=ctx) as c:
        assert c.get("/").status == 200
        session = c.session
    gen = m.status()["generation"]
    m.reload(m.config)
    deadline = time.monotonic() + 5
    while m.status()["generation"] == gen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert m.status()["generation"] == gen + 1
    with TLSClient(m.tls_port, "shop.test", ctx=ctx, session=session) as c:
        assert c.get("/").status == 200
        assert c.session_reused


def test_date_stored_with_a_cached_answer_that_had_none(moat_factory, origin_factory, pki):
    """A cacheable answer without Date is stored with the time moat got it: the hit that
    follows carries that same Date (not none, not a new one)."""
    o = origin_factory(lambda req, o: response(200, "cached, no date\n",
                                               [("Cache-Control", "max-age=60")]), name="cnd")
    m = tls_moat(moat_factory, pki, o)
    with Client(m.port) as c:
        c.send("GET /cd HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        first = c.read_response()
        time.sleep(1.1)
        c.send("GET /cd HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        hit = c.read_response()
    assert "hit" in hit.header("Cache-Status", ""), hit.headers
    assert len(o.requests) == 1
    assert len(first.header_all("Date")) == 1 and hit.header_all("Date") == first.header_all("Date")
