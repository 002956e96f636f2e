"""test_120_acme: certificates from an ACME CA (src/acme/, docs/acme.md) against Debian's
pebble (the Let's Encrypt project's test CA) and pebble-challtestsrv as its DNS, both started
here on 127.0.0.1:

    challtestsrv: DNS on a free port, every A query answered 127.0.0.1 (no AAAA), its own
                  http-01 / tls-alpn-01 servers off so that they take no port
    pebble:       directory over HTTPS with the session's test PKI (pki.origin: SAN IP
                  127.0.0.1), httpPort / tlsPort = moat's plain and TLS listener ports, so
                  the validations reach moat; PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0
                  and PEBBLE_AUTHZREUSE=0 keep it fast and deterministic
    moat:         tls.acme -> pebble with ca_file = the test CA

The certificates moat serves are checked against pebble's issuing root, fetched from its
management port (/roots/0), with Python's ssl and `openssl s_client`.
"""

import json
import os
import re
import shutil
import ssl
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import MOAT_BIN, free_port, metric, wait_listening

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")


class Pebble:
    """pebble + pebble-challtestsrv on free ports, validating against moat's <http_port> and
    <tls_port>."""

    def __init__(self, workdir, pki, http_port, tls_port):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        ports = set()
        while len(ports) < 4:  # free_port() may hand out the same port twice
            ports.add(free_port())
        self.port, self.mgmt, self.dns, self.chal_mgmt = sorted(ports)
        self.http_port, self.tls_port = http_port, tls_port
        self.procs = []
        self.pebble = None
        self.ocsp_url = ""  # pebble writes it into the certificates' AIA extension

    @property
    def directory(self):
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self):
        assert PEBBLE and CHALLTESTSRV, "pebble is not installed: run scripts/install-deps"
        if not self.procs:
            log = open(self.dir / "challtestsrv.log", "ab")
            self.procs.append(subprocess.Popen(
                [CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                 "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-management", f"127.0.0.1:{self.chal_mgmt}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL))
            assert wait_listening(self.chal_mgmt, 10), "challtestsrv did not start"
        cfg = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": self.pki.origin.cert, "privateKey": self.pki.origin.key,
            "httpPort": self.http_port, "tlsPort": self.tls_port,
            "ocspResponderURL": self.ocsp_url, "externalAccountBindingRequired": False}}
        (self.dir / "pebble.json").write_text(json.dumps(cfg))
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_AUTHZREUSE="0")
        log = open(self.dir / "pebble.log", "ab")
        self.pebble = subprocess.Popen(
            [PEBBLE, "-config", str(self.dir / "pebble.json"), "-dnsserver",
             f"127.0.0.1:{self.dns}"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            env=env)
        # pebble makes two RSA keys before it listens: slow on a loaded machine
        ok = wait_listening(self.port, 30, self.pebble) and \
            wait_listening(self.mgmt, 30, self.pebble)
        assert ok, f"pebble did not start (exit {self.pebble.poll()}):\n{self.log()[-3000:]}"
        return self

    def stop_pebble(self):
        if self.pebble and self.pebble.poll() is None:
            self.pebble.terminate()
            self.pebble.wait(10)

    def stop(self):
        self.stop_pebble()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)

    def log(self):
        f = self.dir / "pebble.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def root(self):
        """pebble's issuing root (PEM path): a new one per pebble run."""
        r = requests.get(f"https://127.0.0.1:{self.mgmt}/roots/0", verify=self.pki.ca,
                         timeout=5)
        assert r.status_code == 200, r.text
        p = self.dir / f"root-{self.pebble.pid}.pem"
        p.write_text(r.text)
        return str(p)


@pytest.fixture
def pebbles(tmp_path):
    started = []

    def make(pki, http_port, tls_port):
        pb = Pebble(tmp_path / f"pebble{len(started)}", pki, http_port, tls_port)
        started.append(pb)
        return pb

    yield make
    for pb in started:
        pb.stop()


NAMES = ["a.test", "www.a.test"]


def acme_moat(moat_factory, pebbles, pki, origin, challenges, storage=None, site=None,
              certs=None, directory=None, start_pebble=True, ocsp_url="", tls_extra=None,
              extra_sites=(), **acme):
    """A moat with a plain and a TLS listener, admin on, site NAMES with tls: acme (and the
    keys of <site>), a pebble for it; returns (moat, pebble)."""
    cfg = moat_factory.config([origin], admin=True)
    d = Path(cfg["_dir"])
    cfg["listen"] = [cfg["listen"][0], {"addr": f"127.0.0.1:{free_port()}", "tls": True}]
    http_port = int(cfg["listen"][0].rsplit(":", 1)[1])
    tls_port = int(cfg["listen"][1]["addr"].rsplit(":", 1)[1])
    pb = pebbles(pki, http_port, tls_port)
    pb.ocsp_url = ocsp_url
    a = {"directory": directory or pb.directory, "email": "ops@a.test",
         "storage": str(storage or d / "acme"), "ca_file": pki.ca,
         "challenges": challenges, "check_interval": "1s", "retry_min": "1s",
         "retry_max": "2s", "timeout": "5s"}
    a.update(acme)
    cfg["tls"] = {"acme": a}
    cfg["tls"].update(tls_extra or {})
    if certs:
        cfg["tls"]["certificates"] = [{"cert": c.cert, "key": c.key} for c in certs]
    s = {"hosts": NAMES, "pool": "main", "tls": "acme"}
    s.update(site or {})
    cfg["sites"] = [s] + list(extra_sites) + [{"hosts": ["*"], "pool": "main"}]
    if start_pebble:
        pb.start()
    return moat_factory(config=cfg), pb


def acme_status(m, site="a.test", present=True):
    acme = m.status().get("acme") or []
    st = [e for e in acme if e["site"] == site]
    if not present and not st:
        return None
    assert len(st) == 1, acme
    return st[0]


def wait_state(m, pred, timeout=20, site="a.test"):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = acme_status(m, site, present=False)  # a site a reload adds comes a bit later
        if st is not None and pred(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"acme status never matched: {st}\nmoat stderr:\n{m.stderr()[-3000:]}")


def served(port, name, root):
    """The certificate moat serves for SNI <name>, verified for <name> against <root>:
    (serial, SAN DNS names, notAfter)."""
    ctx = ssl.create_default_context(cafile=root)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            c = s.getpeercert()
    return (c["serialNumber"], sorted(v for k, v in c.get("subjectAltName", ()) if k == "DNS"),
            c["notAfter"])


def handshake_fails(port, name):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name):
                return False
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.mark.timeout(60)
def test_http01_certificate_served_for_the_site_names(moat_factory, pebbles, pki, origin,
                                                      http):
    # The site redirects every plain-HTTP request to https: the CA's HTTP-01 request must be
    # answered before that rule.
    m, pb = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"],
                      site={"https": {"redirect": True}})
    st = wait_state(m, lambda s: s["state"] == "valid")
    assert st["names"] == "a.test,www.a.test" and st["issued"] == 1 and st["failures"] == 0
    assert st["not_after"] > time.time() + 86400
    root = pb.root()
    for name in NAMES:
        serial, sans, _ = served(m.tls_port, name, root)
        assert sans == sorted(NAMES)
    # and with openssl s_client, verified against pebble's root
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{m.tls_port}",
                          "-servername", "www.a.test", "-CAfile", root, "-verify_hostname",
                          "www.a.test", "-verify_return_error"],
                         input=b"", capture_output=True, timeout=10)
    assert out.returncode == 0 and b"Verify return code: 0 (ok)" in out.stdout, out.stdout
    # The validations went through moat's plain listener and got the key authorization,
    # not the site's redirect.
    lines = [l for l in m.access_lines(2) if "acme-challenge" in l["path"]]
    assert len(lines) >= 2 and all(l["status"] == 200 for l in lines), lines
    # An unknown token is an ordinary request: the site's rule applies.
    r = http.get(m.url("/.well-known/acme-challenge/nope"), headers={"Host": "a.test"},
                 allow_redirects=False)
    assert r.status_code == 301
    # /metrics: the certificate's expiry and the issue count
    mt = m.metrics()
    assert metric(mt, "moat_tls_certificate_expiry_seconds", file="acme",
                  names="a.test,www.a.test") == st["not_after"]
    assert metric(mt, "moat_acme_certificates_issued_total", site="a.test") == 1
    assert metric(mt, "moat_acme_order_failures", site="a.test") == 0
    # the ACME names were served their own certificate, not the default one
    assert metric(mt, "moat_tls_sni_default_total") == 0
    # the dashboard's snapshot (GET /events) shows it with its days left
    # (a snapshot a second: one built before the certificate arrived may come first)
    certs, deadline = [], time.monotonic() + 5
    with requests.get(f"http://127.0.0.1:{m.admin_port}/events", stream=True, timeout=8) as r:
        assert r.status_code == 200
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                d = json.loads(line[5:])
                certs = [c for c in d.get("certs", []) if c["source"] == "acme"]
                if (certs and certs[0]["state"] == "valid") or time.monotonic() > deadline:
                    break
    assert len(certs) == 1 and certs[0]["names"] == "a.test,www.a.test"
    assert certs[0]["state"] == "valid" and certs[0]["days_left"] > 1000, certs
    # stored 0600 for a restart
    store = Path(m.config["tls"]["acme"]["storage"])
    for f in ("account.key", "a.test.crt", "a.test.key"):
        assert (store / f).stat().st_mode & 0o777 == 0o600, f
    assert "http-01" in m.stderr() and "tls-alpn-01" not in m.stderr()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocols", ["default", "tls1.2"])
def test_tls_alpn01_certificate(moat_factory, pebbles, pki, origin, protocols):
    # With TLS 1.2 OpenSSL picks the certificate before it selects ALPN: the acme-tls/1
    # offer must be noticed in the ClientHello.
    m, pb = acme_moat(moat_factory, pebbles, pki, origin, ["tls-alpn-01"],
                      tls_extra={} if protocols == "default" else {"protocols": protocols})
    wait_state(m, lambda s: s["state"] == "valid")
    root = pb.root()
    serial, sans, _ = served(m.tls_port, "a.test", root)
    assert sans == sorted(NAMES)
    assert "answering tls-alpn-01" in m.stderr()
    # no HTTP-01 request reached the plain listener
    assert not [l for l in m.access_lines(0, timeout=0.2) if "acme-challenge" in json.dumps(l)]
    # acme-tls/1 without a pending challenge is refused (no protocol in common)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        with socket.create_connection(("127.0.0.1", m.tls_port), timeout=5) as raw:
            ctx.wrap_socket(raw, server_hostname="a.test")


@pytest.mark.timeout(60)
def test_renewal_when_renew_before_is_reached_then_ca_down_keeps_serving(
        moat_factory, pebbles, pki, origin):
    # pebble's certificates live 5 years: renew_before 3650d is always reached, so moat
    # renews at every check_interval (1s).
    m, pb = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"], renew_before="3650d")
    wait_state(m, lambda s: s["issued"] >= 1)
    root = pb.root()
    first, _, _ = served(m.tls_port, "a.test", root)
    wait_state(m, lambda s: s["issued"] >= 2)
    deadline = time.monotonic() + 5
    second = first
    while second == first and time.monotonic() < deadline:
        second, _, _ = served(m.tls_port, "a.test", root)
        time.sleep(0.1)
    assert second != first, "the renewed certificate is not served"
    # The CA refuses the next orders: a.test now resolves (challtestsrv) to an address moat
    # does not listen on, so pebble's validation fails and the authorization is invalid.
    r = requests.post(f"http://127.0.0.1:{pb.chal_mgmt}/add-a",
                      json={"host": "a.test", "addresses": ["127.0.0.2"]}, timeout=5)
    assert r.status_code == 200, r.text
    st = wait_state(m, lambda s: s["failures"] >= 1)
    assert st["state"] == "failing" and "a.test: authorization invalid" in st["last_error"], st
    still, sans, _ = served(m.tls_port, "www.a.test", root)
    assert sans == sorted(NAMES)
    # The CA goes away: renewals fail, are logged and reported, the certificate stays.
    pb.stop_pebble()
    st = wait_state(m, lambda s: s["failures"] >= 3 and "connect" in s["last_error"])
    assert st["state"] == "failing", st
    assert st["not_after"] > time.time()
    current, sans, _ = served(m.tls_port, "a.test", root)
    assert sans == sorted(NAMES) and current == still
    assert "order failed" in m.stderr() and "the current certificate is still served" in \
        m.stderr()
    assert metric(m.metrics(), "moat_acme_order_failures", site="a.test") >= 2


@pytest.mark.timeout(60)
def test_certificate_kept_across_a_restart(moat_factory, pebbles, pki, origin, tmp_path):
    store = tmp_path / "shared-acme"
    m, pb = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"], storage=store)
    wait_state(m, lambda s: s["state"] == "valid")
    root = pb.root()
    serial, _, _ = served(m.tls_port, "www.a.test", root)
    m.stop()
    pb.stop_pebble()  # the CA is down: the stored certificate must do
    m.start()
    st = acme_status(m)
    assert st["state"] == "valid" and st["issued"] == 0
    assert served(m.tls_port, "www.a.test", root)[0] == serial
    assert "loaded from" in m.stderr()


@pytest.mark.timeout(60)
def test_before_the_first_certificate(moat_factory, pebbles, pki, origin):
    # The CA cannot be reached: without tls.certificates the ACME names fail their handshake;
    # with them, they get the default certificate. /status says why.
    dead = f"https://127.0.0.1:{free_port()}/dir"
    m, _ = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"], directory=dead,
                     start_pebble=False)
    st = wait_state(m, lambda s: s["failures"] >= 1)
    assert st["state"] == "failing" and st["not_after"] == 0 and "connect" in st["last_error"]
    assert handshake_fails(m.tls_port, "a.test")
    assert "order failed" in m.stderr()
    m2, _ = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"], directory=dead,
                      start_pebble=False, certs=[pki.shop_ec])
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", m2.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test") as s:
            sans = [v for k, v in s.getpeercert()["subjectAltName"]]
    assert "shop.test" in sans


def check(tmp_path, text):
    p = tmp_path / "moat.yaml"
    p.write_text(text)
    r = subprocess.run([MOAT_BIN, "-t", "-c", str(p)], capture_output=True, text=True,
                       timeout=10)
    return r.returncode, r.stdout + r.stderr


BAD_BASE = """\
listen: ["127.0.0.1:1", {addr: "127.0.0.1:2", tls: true}]
tls:
  acme:
    directory: https://127.0.0.1:3/dir
    storage: /tmp/none
pools:
  p: {origins: ["127.0.0.1:9"]}
sites:
  - hosts: [shop.test, "*.shop.test"]
    pool: p
    tls: acme
"""


def test_config_refuses_wildcards_and_bad_acme_keys(tmp_path):
    rc, out = check(tmp_path, BAD_BASE)
    assert rc == 1
    assert 'moat.yaml:11:10: sites[0].tls: host "*.shop.test" is a wildcard' in out, out
    assert "dns-01" in out
    rc, out = check(tmp_path, BAD_BASE.replace('"*.shop.test"', "www.shop.test"))
    assert rc == 0, out
    assert "has no certificate" not in out, out  # ACME sites are not "uncovered" names
    rc, out = check(tmp_path, BAD_BASE.replace('"*.shop.test"', "www.shop.test")
                    .replace("    storage: /tmp/none\n", ""))
    assert rc == 1 and "tls.acme.storage: required key is missing" in out, out
    rc, out = check(tmp_path, BAD_BASE.replace('"*.shop.test"', "www.shop.test")
                    .replace("    storage:", "    challenges: [dns-01]\n    storage:"))
    assert rc == 1 and "moat.yaml:5:18: tls.acme.challenges[0]: dns-01 is not supported" in out, \
        out
    no_acme = BAD_BASE.replace('"*.shop.test"', "www.shop.test").replace(
        "tls:\n  acme:\n    directory: https://127.0.0.1:3/dir\n    storage: /tmp/none\n", "")
    rc, out = check(tmp_path, no_acme)
    assert rc == 1 and "tls: acme needs tls.acme" in out, out


class OcspResponder:
    """An OCSP responder on 127.0.0.1: each POSTed request is answered by `openssl ocsp` in
    responder mode (-index, -rsigner: pebble's intermediate and its key, from pebble's
    management API), one process per request, so nothing listens beyond loopback."""

    def __init__(self, workdir, port):
        import http.server
        import threading
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.requests = 0
        me = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                (me.dir / "req.der").write_bytes(self.rfile.read(n))
                me.requests += 1
                subprocess.run(
                    ["openssl", "ocsp", "-index", str(me.dir / "index.txt"), "-CA",
                     str(me.dir / "inter.pem"), "-rsigner", str(me.dir / "inter.pem"),
                     "-rkey", str(me.dir / "inter.key"), "-reqin", str(me.dir / "req.der"),
                     "-respout", str(me.dir / "resp.der"), "-nmin", "10"],
                    capture_output=True, timeout=10, check=True)
                body = (me.dir / "resp.der").read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.thread = None
        self.threading = threading

    def setup(self, pb, leaf_serial_hex, not_after):
        r = requests.get(f"https://127.0.0.1:{pb.mgmt}/intermediates/0", verify=pb.pki.ca,
                         timeout=5)
        inter = r.text
        r = requests.get(f"https://127.0.0.1:{pb.mgmt}/intermediate-keys/0", verify=pb.pki.ca,
                         timeout=5)
        self.setup_files(inter, r.text, leaf_serial_hex, not_after)

    def setup_files(self, inter_pem, inter_key, leaf_serial_hex, not_after):
        (self.dir / "inter.pem").write_text(inter_pem)
        (self.dir / "inter.key").write_text(inter_key)
        exp = time.strftime("%y%m%d%H%M%SZ", time.gmtime(not_after))
        (self.dir / "index.txt").write_text(f"V\t{exp}\t\t{leaf_serial_hex}\tunknown\t/CN=a.test\n")

    def start(self):
        self.thread = self.threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def s_client_status(port, name, root):
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                          "-servername", name, "-CAfile", root, "-status",
                          "-verify_return_error"],
                         input=b"", capture_output=True, timeout=10)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.decode(errors="replace")


@pytest.mark.timeout(90)
def test_ocsp_stapling(moat_factory, pebbles, pki, origin, tmp_path):
    ocsp_port = free_port()
    store = tmp_path / "acme-ocsp"
    m, pb = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"], storage=store,
                      ocsp_url=f"http://127.0.0.1:{ocsp_port}/")
    wait_state(m, lambda s: s["state"] == "valid")
    root = pb.root()
    # No responder yet: the fetch fails and is reported; handshakes go on without a staple.
    st = wait_state(m, lambda s: s["ocsp"]["last_error"] != "")
    assert "connect" in st["ocsp"]["last_error"] and st["ocsp"]["next_update"] == 0
    out = s_client_status(m.tls_port, "a.test", root)
    assert "OCSP response: no response sent" in out, out
    # The responder comes up: moat's next try gets a good response and staples it.
    ctx = ssl.create_default_context(cafile=root)
    with socket.create_connection(("127.0.0.1", m.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test") as s:
            der = s.getpeercert(binary_form=True)
    leaf = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial",
                           "-enddate"], input=der, capture_output=True, check=True).stdout.decode()
    serial = re.search(r"serial=([0-9A-F]+)", leaf).group(1)
    resp = OcspResponder(tmp_path / "ocsp", ocsp_port)
    resp.setup(pb, serial, time.time() + 86400 * 365)
    resp.start()
    try:
        st = wait_state(m, lambda s: s["ocsp"]["next_update"] > 0)
        assert st["ocsp"]["last_error"] == "" and st["ocsp"]["next_update"] > time.time()
        out = s_client_status(m.tls_port, "a.test", root)
        assert "OCSP Response Status: successful" in out and "Cert Status: good" in out, out
        assert resp.requests >= 1
        assert metric(m.metrics(), "moat_acme_ocsp_next_update_seconds", site="a.test") == \
            st["ocsp"]["next_update"]
        assert (store / "a.test.ocsp").stat().st_size > 0
    finally:
        resp.stop()
    # Restarted with the CA and the responder gone: the response cached on disk is stapled.
    m.stop()
    pb.stop_pebble()
    m.start()
    out = s_client_status(m.tls_port, "a.test", root)
    assert "Cert Status: good" in out, out


@pytest.mark.timeout(60)
def test_storage_lock_keeps_a_second_node_from_ordering(moat_factory, pebbles, pki, origin,
                                                        tmp_path, http):
    import fcntl
    store = tmp_path / "shared"
    store.mkdir(mode=0o700)
    # Another node holds the lock (it is ordering): this one must not order meanwhile.
    with open(store / "lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        m, pb = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"], storage=store)
        time.sleep(3)
        st = acme_status(m)
        assert st["state"] == "pending" and st["issued"] == 0 and st["failures"] == 0, st
        assert "/order-plz" not in pb.log() and "ordering" not in m.stderr()
    # Lock released: it looks again within 5 s and orders.
    st = wait_state(m, lambda s: s["state"] == "valid", timeout=20)
    root = pb.root()
    serial = served(m.tls_port, "a.test", root)[0]
    # A second node on the same storage serves the stored certificate without ordering.
    m2, pb2 = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"], storage=store)
    st2 = acme_status(m2)
    assert st2["state"] == "valid" and st2["issued"] == 0
    assert served(m2.tls_port, "a.test", root)[0] == serial
    assert "/order-plz" not in pb2.log()


@pytest.mark.timeout(60)
def test_reload_adds_a_site_and_it_is_ordered(moat_factory, pebbles, pki, origin):
    m, pb = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"])
    wait_state(m, lambda s: s["state"] == "valid")
    cfg = dict(m.config)
    cfg["sites"] = [cfg["sites"][0], {"hosts": ["b.test"], "pool": "main", "tls": "acme"},
                    cfg["sites"][-1]]
    m.reload(cfg)
    st = wait_state(m, lambda s: s["state"] == "valid", site="b.test")
    assert st["names"] == "b.test" and st["issued"] == 1
    root = pb.root()
    assert served(m.tls_port, "b.test", root)[1] == ["b.test"]
    assert acme_status(m)["issued"] == 1  # a.test was kept, not ordered again
    # and removed again: the site leaves /status, its name gets no certificate
    cfg["sites"] = [cfg["sites"][0], cfg["sites"][-1]]
    m.reload(cfg)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and \
            any(e["site"] == "b.test" for e in m.status().get("acme") or []):
        time.sleep(0.1)
    assert [e["site"] for e in m.status()["acme"]] == ["a.test"]
    assert handshake_fails(m.tls_port, "b.test")


@pytest.mark.timeout(60)
def test_ocsp_stapling_for_configured_certificates(moat_factory, pki, origin, tmp_path):
    """tls.certificates entries with an OCSP URL are stapled too (no tls.acme needed)."""
    from types import SimpleNamespace
    from pki import cert_info, keygen, run
    ocsp_port = free_port()
    d = tmp_path / "leaf"
    d.mkdir()
    key, csr, ext, leaf = d / "k.pem", d / "c.csr", d / "ext.cnf", d / "leaf.pem"
    keygen(key, "ec")
    run("openssl", "req", "-new", "-key", str(key), "-out", str(csr), "-subj", "/CN=stapled.test")
    ext.write_text("[ leaf ]\nbasicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n"
                   "subjectAltName = DNS:stapled.test\n"
                   f"authorityInfoAccess = OCSP;URI:http://127.0.0.1:{ocsp_port}/\n")
    pki.inter.sign(csr, leaf, "leaf", extfile=ext)
    full = d / "full.pem"
    full.write_text(leaf.read_text() + pki.inter.chain)
    stapled = SimpleNamespace(cert=str(full), key=str(key))
    info = cert_info(str(leaf))
    # The responder is down: the handshake goes on without a staple, /status says why.
    cfg = moat_factory.tls_config([origin], pki, certs=[pki.shop_ec, stapled])
    m = moat_factory(config=cfg)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (m.status().get("ocsp") or [{}])[0].get(
            "last_error"):
        time.sleep(0.1)
    st = m.status()["ocsp"]
    assert len(st) == 1 and st[0]["file"] == str(full) and "connect" in st[0]["last_error"], st
    out = s_client_status(m.tls_port, "stapled.test", pki.ca)
    assert "OCSP response: no response sent" in out, out
    assert "fetch from http://127.0.0.1" in m.stderr()
    m.stop()
    # With the responder up, a start staples a good response; the certificate without an
    # OCSP URL gets none.
    resp = OcspResponder(tmp_path / "ocsp", ocsp_port)
    resp.setup_files(pki.inter.cert.read_text(), pki.inter.key.read_text(),
                     info["serial"], time.time() + 86400 * 365)
    resp.start()
    try:
        m.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not m.status()["ocsp"][0]["next_update"]:
            time.sleep(0.1)
        st = m.status()["ocsp"][0]
        assert st["next_update"] > time.time() and st["last_error"] == "", st
        out = s_client_status(m.tls_port, "stapled.test", pki.ca)
        assert "OCSP Response Status: successful" in out and "Cert Status: good" in out, out
        out = s_client_status(m.tls_port, "shop.test", pki.ca)
        assert "OCSP response: no response sent" in out, out
        assert metric(m.metrics(), "moat_ocsp_next_update_seconds", file=str(full)) == \
            st["next_update"]
    finally:
        resp.stop()


@pytest.mark.timeout(60)
def test_http01_answered_under_attack_mode(moat_factory, pebbles, pki, origin, http):
    """The shield's under-attack challenge (503 page) stands in front of every request of
    the site, but not of the CA's HTTP-01 requests: they are answered before the phases."""
    m, pb = acme_moat(moat_factory, pebbles, pki, origin, ["http-01"],
                      site={"under_attack": "on"})
    r = http.get(m.url("/"), headers={"Host": "a.test"}, allow_redirects=False)
    assert r.status_code == 503  # a visitor is challenged
    st = wait_state(m, lambda s: s["state"] == "valid")
    assert st["issued"] == 1
    assert served(m.tls_port, "a.test", pb.root())[1] == sorted(NAMES)
    lines = [l for l in m.access_lines(3) if "acme-challenge" in l["path"]]
    assert len(lines) >= 2 and all(l["status"] == 200 for l in lines), lines
    # an unknown token is an ordinary request: challenged like the rest
    r = http.get(m.url("/.well-known/acme-challenge/nope"), headers={"Host": "a.test"},
                 allow_redirects=False)
    assert r.status_code == 503
