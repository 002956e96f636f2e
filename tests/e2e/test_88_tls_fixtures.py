"""test_88_tls_fixtures: the TLS test kit on its own, without moat: the test PKI, the TLS
origin and the TLS clients (tlsclient.py) against it. The TLS tests of test_90 / test_91 rely
on these facts (a refusal they see comes from moat, not from the client or the certificates),
so they are checked here first."""

import ssl
import subprocess

import pytest

from origins import default_handler, early_hints_handler
from pki import cert_info
from rawhttp import Client
from tlsclient import TLSClient, context, handshake, https_session, resumption, s_client


def openssl_verify(pki, leaf_pem, untrusted=True):
    args = ["openssl", "verify", "-CAfile", pki.ca]
    if untrusted:
        args += ["-untrusted", str(pki.inter.cert)]
    p = subprocess.run(args + [leaf_pem], capture_output=True, text=True)
    return p.returncode == 0, p.stdout + p.stderr


def pubkey(args):
    return subprocess.run(["openssl"] + args, capture_output=True, text=True, check=True).stdout


def test_pki_certificates(pki):
    for leaf in (pki.shop_ec, pki.shop_rsa, pki.api_wild, pki.other, pki.origin):
        ok, out = openssl_verify(pki, leaf.leaf)
        assert ok, out
        # the server file is leaf + intermediate, so it verifies against the root alone
        p = subprocess.run(["openssl", "verify", "-CAfile", pki.ca, "-untrusted", leaf.cert,
                            leaf.leaf], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        # and the key is the certificate's
        assert pubkey(["pkey", "-in", leaf.key, "-pubout"]) == \
            pubkey(["x509", "-in", leaf.leaf, "-noout", "-pubkey"])
    ok, out = openssl_verify(pki, pki.client.leaf)
    assert ok, out
    ok, out = openssl_verify(pki, pki.wrong_ca.leaf)
    assert not ok and "unable to get local issuer" in out, out
    ok, out = openssl_verify(pki, pki.expired.leaf)
    assert not ok and "expired" in out, out

    assert pki.shop_ec.names == pki.shop_rsa.names == ["shop.test", "www.shop.test"]
    info = cert_info(pki.shop_ec.leaf)
    assert (info["key_type"], info["bits"], info["curve"]) == ("EC", 256, "P-256")
    info = cert_info(pki.shop_rsa.leaf)
    assert (info["key_type"], info["bits"]) == ("RSA", 2048)
    assert cert_info(pki.api_wild.leaf)["names"] == ["*.api.test"]
    assert cert_info(pki.origin.leaf)["ips"] == ["127.0.0.1"]
    assert pki.expired.not_after.year == 2020
    # a reissued leaf has a new serial and the same names
    again = pki.issue("shop-ec", pki.shop_ec.names, "ec")
    assert again.serial != pki.shop_ec.serial and again.names == pki.shop_ec.names


def test_tls_origin_serves_keepalive_and_records(origin_factory, pki):
    o = origin_factory.tls(cert=pki.origin, name="sec")
    s = https_session(pki.ca)
    for i in range(3):
        r = s.get(f"https://origin.test:{o.port}/k{i}", timeout=5)
        assert r.status_code == 200 and r.text == f"ok sec /k{i}\n"
    s.close()
    assert o.tls_accepts == 1 and len(o.requests) == 3
    rec = o.conns[0]
    assert rec.sni == "origin.test" and rec.version in ("TLSv1.3", "TLSv1.2")
    assert o.requests[0].header("Host") == f"origin.test:{o.port}"
    # no SNI at all, and an IP literal checked against the IP SAN
    h = handshake(o.port, None, ca=pki.ca)
    assert h.ok and h.status == 200, h
    assert o.conns[-1].sni is None
    h = handshake(o.port, "127.0.0.1", ca=pki.ca)
    assert h.ok, h
    # a name the certificate does not have: the client refuses
    assert not handshake(o.port, "nope.test", ca=pki.ca).ok


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_tls_origin_resumption(origin_factory, pki, version):
    o = origin_factory.tls(cert=pki.origin)
    reused = resumption(o.port, "origin.test", 5, ca=pki.ca, version=version)
    assert reused == [True] * 5
    assert (o.tls_accepts, o.full, o.resumed) == (6, 1, 5)
    # without tickets the Python origin still serves (whether a session resumes then depends
    # on its own session cache and on timing: not what moat's tests rely on)
    o = origin_factory.tls(cert=pki.origin, session_tickets=False)
    assert len(resumption(o.port, "origin.test", 2, ca=pki.ca, version=version)) == 2


@pytest.fixture
def s_server_no_tickets(pki):
    """openssl s_server with a session cache and no tickets, on a free port."""
    from conftest import free_port, wait_listening
    port = free_port()
    p = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
                          pki.shop_ec.leaf, "-cert_chain", str(pki.inter.cert), "-key",
                          pki.shop_ec.key, "-no_ticket", "-www", "-quiet"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    assert wait_listening(port, 5, p)
    yield port
    p.kill()
    p.wait(5)


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_client_resumes_by_session_cache(s_server_no_tickets, pki, version):
    """What test_90's `session_tickets: false` test relies on: the client resumes by session
    ID (TLS 1.2) or by a stateful ticket (TLS 1.3) from a server's session cache."""
    reused = resumption(s_server_no_tickets, "shop.test", 3, ca=pki.ca, version=version)
    assert reused == [True] * 3


def test_tls_origin_client_certificate(origin_factory, pki):
    o = origin_factory.tls(cert=pki.origin, client_ca=pki.ca, require_client_cert=True)
    assert not handshake(o.port, "origin.test", ca=pki.ca).ok
    o.wait_tls_errors(1)
    h = handshake(o.port, "origin.test", ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    assert h.ok and h.status == 200, h
    rec = [c for c in o.conns if c.tls][-1]
    subject = dict(x[0] for x in rec.peer_cert["subject"])
    assert subject["commonName"] == "moat-client"


def test_s_client_sees_key_type_by_offer(origin_factory, pki):
    o = origin_factory.tls(certs=[pki.shop_ec, pki.shop_rsa])
    for tls in ("1.3", "1.2"):
        ec = s_client(o.port, "shop.test", tls=tls, ca=pki.ca)
        assert ec.ok and ec.cert["key_type"] == "EC" and ec.peer_sig == "ECDSA", ec.output
        assert ec.verify_ok and ec.cert["names"] == ["shop.test", "www.shop.test"]
        rsa = s_client(o.port, "shop.test", tls=tls, sigalgs="RSA-PSS+SHA256:rsa_pkcs1_sha256",
                       ca=pki.ca)
        assert rsa.ok and rsa.cert["key_type"] == "RSA" and rsa.cert["bits"] == 2048, rsa.output
        assert rsa.peer_sig in ("RSA-PSS", "RSA")
    pinned = s_client(o.port, "shop.test", tls="1.3", ciphersuites="TLS_AES_128_GCM_SHA256",
                      groups="P-256")
    assert pinned.cipher == "TLS_AES_128_GCM_SHA256" and "P-256" in pinned.group, pinned.output
    assert s_client(o.port, None).ok


def test_old_protocol_clients_really_offer_them(origin_factory, pki):
    """The TLS 1.0 / 1.1 clients of test_90 do speak those versions: a server that allows
    them completes the handshake; one that does not (TLS 1.2 minimum) refuses it."""
    old = origin_factory.tls(cert=pki.origin, min_version=ssl.TLSVersion.TLSv1, legacy=True)
    new = origin_factory.tls(cert=pki.origin)
    for v, name in (("1.0", "TLSv1"), ("1.1", "TLSv1.1")):
        h = handshake(old.port, "origin.test", ca=pki.ca, version=v, legacy=True)
        assert h.ok and h.version == name, h
        assert s_client(old.port, "origin.test", tls=v, legacy=True).version == name
        assert not handshake(new.port, "origin.test", ca=pki.ca, version=v, legacy=True).ok
        assert not s_client(new.port, "origin.test", tls=v, legacy=True).ok


def test_alpn_offer_is_seen(origin_factory, pki):
    o = origin_factory.tls(cert=pki.origin, alpn=["http/1.1"])
    h = handshake(o.port, "origin.test", ca=pki.ca, alpn=["h2", "http/1.1"])
    assert h.ok and h.alpn == "http/1.1"
    assert o.conns[-1].alpn == "http/1.1"


def test_early_hints_origin(origin_factory):
    o = origin_factory(early_hints_handler)
    with Client(o.port) as c:
        c.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response(allow_1xx=True)
        assert r.status == 103 and "preload" in r.header("Link")
        r = c.read_response()
        assert r.status == 200 and r.body == b"final /x\n"


def test_tlsclient_raw_requests(origin_factory, pki):
    o = origin_factory.tls(default_handler, cert=pki.origin)
    ctx = context(ca=pki.ca)
    with TLSClient(o.port, "origin.test", ctx=ctx) as c:
        assert c.get("/a").body == b"ok tls1 /a\n"
        c.send("GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().body == b"ok tls1 /b\n"
        assert c.read_response().body == b"ok tls1 /c\n"
        assert c.peer()["names"] == ["origin.test"]
