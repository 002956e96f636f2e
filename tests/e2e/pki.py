"""pki.py: a throwaway test PKI made with the openssl CLI, for the TLS end-to-end tests.

    pki = PKI(tmpdir)          # builds everything below (about 1 s: two RSA keys)
    pki.ca                     # the trusted root CA certificate (PEM path): clients' verify=
    pki.shop_ec / shop_rsa     # leaves for shop.test, www.shop.test: ECDSA P-256 and RSA-2048
    pki.api_wild               # *.api.test (ECDSA)
    pki.other                  # other.test (ECDSA)
    pki.origin                 # origin.test + IP 127.0.0.1 (ECDSA): a TLS origin's certificate
    pki.wrong_ca               # origin.test, shop.test + IP 127.0.0.1, signed by an untrusted CA
    pki.expired                # shop.test, valid 2020-01-01 .. 2020-02-01 (same trusted CA)
    pki.client                 # a client certificate (CN moat-client, extendedKeyUsage clientAuth)
    pki.issue(name, sans, ...) # one more leaf, e.g. a new certificate for a reload test

Every leaf is a `Leaf`: .cert (leaf then intermediate, what a server loads: "PEM: leaf then
chain"), .key, .leaf (the leaf alone), .serial (hex, upper case, as `openssl x509 -serial`
prints it), .names (its SAN DNS names), .key_type ("EC" or "RSA"), .not_after.

Layout: root CA (ECDSA P-256) -> intermediate CA -> server leaves, so a server that does not
send its chain fails verification against pki.ca alone. The client certificate and the
expired leaf are signed by the root directly (pki.client.cert is then just the leaf).
The untrusted CA is a second root that nothing trusts.
"""

import datetime
import re
import subprocess
from pathlib import Path

OPENSSL = "openssl"

CA_CNF = """\
[ ca ]
default_ca = this
[ this ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/newcerts
serial = {dir}/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
email_in_dn = no
[ anything ]
commonName = supplied
organizationName = optional
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def run(*args, cwd=None, input=None):
    p = subprocess.run(list(args), cwd=cwd, capture_output=True, input=input, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: exit {p.returncode}\n"
                           f"{p.stderr.decode(errors='replace')}")
    return p.stdout.decode(errors="replace")


def keygen(path, kind):
    """Writes a private key: kind "ec" (P-256) or "rsa" (2048 bits)."""
    if kind == "ec":
        run(OPENSSL, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(path))
    elif kind == "rsa":
        run(OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
            "-out", str(path))
    else:
        raise ValueError(kind)
    path.chmod(0o600)


class Leaf:
    def __init__(self, name, cert, key, leaf, names, key_type):
        self.name = name
        self.cert = str(cert)  # leaf + chain, what a server or client loads
        self.key = str(key)
        self.leaf = str(leaf)  # the leaf certificate alone
        self.names = list(names)
        self.key_type = key_type
        info = cert_info(self.leaf)
        self.serial = info["serial"]
        self.not_after = info["not_after"]

    def __repr__(self):
        return f"<Leaf {self.name} {self.key_type} {self.names} serial={self.serial}>"


class CA:
    """A CA directory usable with `openssl ca`."""

    def __init__(self, dir, name, parent=None, kind="ec"):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "newcerts").mkdir(exist_ok=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        self.cnf = self.dir / "ca.cnf"
        self.cnf.write_text(CA_CNF.format(dir=self.dir))
        self.key = self.dir / "ca.key"
        self.cert = self.dir / "ca.pem"
        self.parent = parent
        keygen(self.key, kind)
        if parent is None:
            run(OPENSSL, "req", "-new", "-x509", "-key", str(self.key), "-out", str(self.cert),
                "-days", "3650", "-subj", f"/O=moat tests/CN={name}", "-sha256",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        else:
            csr = self.dir / "ca.csr"
            run(OPENSSL, "req", "-new", "-key", str(self.key), "-out", str(csr),
                "-subj", f"/O=moat tests/CN={name}")
            parent.sign(csr, self.cert, "v3_ca", days=3650)
        # the chain a server sends after its leaf: this CA's certificate unless it is a root
        self.chain = "" if parent is None else self.cert.read_text()

    def sign(self, csr, out, extensions, days=825, extfile=None, start=None, end=None):
        args = [OPENSSL, "ca", "-batch", "-config", str(self.cnf), "-cert", str(self.cert),
                "-keyfile", str(self.key), "-in", str(csr), "-out", str(out), "-notext",
                "-rand_serial", "-extensions", extensions]
        if extfile:
            args += ["-extfile", str(extfile)]
        if start and end:
            args += ["-startdate", start, "-enddate", end]
        else:
            args += ["-days", str(days)]
        run(*args)


class PKI:
    def __init__(self, dir):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n = 0
        self.root = CA(self.dir / "root", "moat test root CA")
        self.inter = CA(self.dir / "inter", "moat test intermediate CA", parent=self.root)
        self.untrusted = CA(self.dir / "untrusted", "some other CA")
        self.ca = str(self.root.cert)
        self.untrusted_ca = str(self.untrusted.cert)
        shop = ["shop.test", "www.shop.test"]
        self.shop_ec = self.issue("shop-ec", shop, "ec")
        self.shop_rsa = self.issue("shop-rsa", shop, "rsa")
        self.api_wild = self.issue("api-wild", ["*.api.test"], "ec")
        self.other = self.issue("other", ["other.test"], "ec")
        self.origin = self.issue("origin", ["origin.test"], "ec", ips=["127.0.0.1"])
        self.wrong_ca = self.issue("wrong-ca", ["origin.test", "shop.test"], "ec",
                                   ips=["127.0.0.1"], ca=self.untrusted)
        self.expired = self.issue("expired", ["shop.test", "origin.test"], "ec",
                                  ips=["127.0.0.1"], ca=self.root,
                                  start="20200101000000Z", end="20200201000000Z")
        self.client = self.issue("client", [], "ec", client=True, ca=self.root,
                                 cn="moat-client")

    def issue(self, name, sans, key_type="ec", ips=(), ca=None, client=False, cn=None,
              days=825, start=None, end=None):
        """Issues one more leaf (by the intermediate unless <ca> is given) into its own
        files; returns a Leaf. Names are unique per PKI: a second call with the same <name>
        gets new files (a new key and serial)."""
        ca = ca or self.inter
        self.n += 1
        base = self.dir / "leaves" / f"{self.n:02d}-{name}"
        base.parent.mkdir(exist_ok=True)
        key = base.with_suffix(".key")
        keygen(key, key_type)
        csr = base.with_suffix(".csr")
        cn = cn or (sans[0] if sans else name)
        run(OPENSSL, "req", "-new", "-key", str(key), "-out", str(csr),
            "-subj", f"/O=moat tests/CN={cn}")
        ext = base.with_suffix(".ext")
        alt = [f"DNS:{n}" for n in sans] + [f"IP:{i}" for i in ips]
        lines = ["[ leaf ]", "basicConstraints = critical, CA:FALSE",
                 "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid:always",
                 "keyUsage = critical, digitalSignature" +
                 (", keyEncipherment" if key_type == "rsa" else ""),
                 "extendedKeyUsage = " + ("clientAuth" if client else "serverAuth")]
        if alt:
            lines.append("subjectAltName = " + ", ".join(alt))
        ext.write_text("\n".join(lines) + "\n")
        leaf = base.with_suffix(".leaf.pem")
        ca.sign(csr, leaf, "leaf", days=days, extfile=ext, start=start, end=end)
        full = base.with_suffix(".pem")
        full.write_text(leaf.read_text() + ca.chain)
        return Leaf(name, full, key, leaf, sans, key_type.upper())


def cert_info(pem_path=None, pem_text=None, der=None):
    """Facts of one certificate (the first in the file): serial (hex), names (SAN DNS),
    ips (SAN IP), key_type ("EC" / "RSA"), bits, curve, subject, issuer, not_after
    (datetime, UTC)."""
    if der is not None:
        text = run(OPENSSL, "x509", "-inform", "DER", "-noout", "-text", "-serial",
                   input=der)
    elif pem_text is not None:
        text = run(OPENSSL, "x509", "-noout", "-text", "-serial", input=pem_text.encode())
    else:
        text = run(OPENSSL, "x509", "-in", str(pem_path), "-noout", "-text", "-serial")
    return parse_x509_text(text)


def parse_x509_text(text):
    out = {"names": [], "ips": [], "key_type": None, "bits": None, "curve": None}
    m = re.search(r"^serial=([0-9A-Fa-f]+)", text, re.M)
    out["serial"] = m.group(1).upper() if m else None
    m = re.search(r"Subject: (.*)", text)
    out["subject"] = m.group(1).strip() if m else ""
    m = re.search(r"Issuer: (.*)", text)
    out["issuer"] = m.group(1).strip() if m else ""
    m = re.search(r"Not After : (.*)", text)
    out["not_after"] = (datetime.datetime.strptime(m.group(1).strip(), "%b %d %H:%M:%S %Y %Z")
                        .replace(tzinfo=datetime.timezone.utc)) if m else None
    m = re.search(r"Public Key Algorithm: (\S+)", text)
    if m:
        out["key_type"] = {"id-ecPublicKey": "EC", "rsaEncryption": "RSA"}.get(m.group(1),
                                                                             m.group(1))
    m = re.search(r"Public-Key: \((\d+) bit\)", text)
    out["bits"] = int(m.group(1)) if m else None
    m = re.search(r"NIST CURVE: (\S+)", text) or re.search(r"ASN1 OID: (\S+)", text)
    out["curve"] = m.group(1) if m else None
    m = re.search(r"X509v3 Subject Alternative Name:.*?\n\s*(.*)", text)
    if m:
        for part in m.group(1).split(","):
            part = part.strip()
            if part.startswith("DNS:"):
                out["names"].append(part[4:])
            elif part.startswith("IP Address:"):
                out["ips"].append(part[11:])
    return out
