#!/usr/bin/python3
"""testssl_summary.py: the verdict on a testssl.sh flat JSON file (--jsonfile) of a run with
-p -s -f -E (scripts/testssl makes one).

    scripts/testssl_summary.py testssl.json     prints PASS/FAIL lines, exits 1 on any FAIL

Checks: SSLv2, SSLv3, TLS 1.0, TLS 1.1 not offered, TLS 1.2 and 1.3 offered; no NULL,
anonymous, EXPORT, LOW, 3DES/IDEA, CBC ("AVERAGE") cipher category offered; every cipher
offered (the -E list) has forward secrecy (ECDHE / DHE key exchange, or TLS 1.3) and an AEAD
(AES-GCM, AES-CCM, ChaCha20-Poly1305); no RC4. Written against testssl 3.0 (Debian 12),
whose ids say PFS where later versions say FS: both are read.
"""

import json
import re
import sys

OFF = ("SSLv2", "SSLv3", "TLS1", "TLS1_1")
ON = ("TLS1_2", "TLS1_3")
WEAK_CATEGORIES = ("NULL", "aNULL", "EXPORT", "LOW", "3DES_IDEA", "AVERAGE")
AEAD = ("AESGCM", "AESCCM", "AESCCM8", "ChaCha20")


def parse_cipher(finding):
    """'TLS 1.2   xc030   ECDHE-RSA-AES256-GCM-SHA384   ECDH 253   AESGCM   256   TLS_...'
    -> (protocol, name, key exchange, encryption)."""
    m = re.match(r"\s*(TLS 1(?:\.\d)?|SSLv\d)\s+x[0-9a-fA-F]+\s+(\S+)\s+(\S+)(?:\s+\d+)?\s+(\S+)",
                 finding)
    if not m:
        return None
    return m.group(1), m.group(2), m.group(3), m.group(4)


def summarize(entries):
    """[(ok, what)] for the checks above, from testssl's flat JSON entries."""
    by_id = {}
    for e in entries:
        by_id.setdefault(e["id"], []).append(e)

    def finding(i):
        return by_id[i][0]["finding"] if i in by_id else None

    out = []
    fatal = [e for e in entries if e.get("severity") == "FATAL" or e["id"] == "scanProblem"]
    out.append((not fatal, "testssl ran to the end" + (
        "" if not fatal else ": " + "; ".join(e["finding"] for e in fatal))))
    for p in OFF:
        f = finding(p)
        out.append((f is not None and f.startswith("not offered"),
                    f"{p} not offered ({f or 'not tested'})"))
    for p in ON:
        f = finding(p)
        out.append((f is not None and f.startswith("offered"),
                    f"{p} offered ({f or 'not tested'})"))
    for c in WEAK_CATEGORIES:
        f = finding(f"cipherlist_{c}")
        out.append((f is not None and f.startswith("not offered"),
                    f"no {c} ciphers ({f or 'not tested'})"))
    fs = finding("FS") or finding("PFS")
    out.append((fs is not None and fs.startswith("offered"),
                f"forward secrecy offered ({fs or 'not tested'})"))
    ciphers = [parse_cipher(e["finding"]) for e in entries if e["id"].startswith("cipher-")]
    bad = [e["finding"] for e in entries if e["id"].startswith("cipher-")
           and parse_cipher(e["finding"]) is None]
    ciphers = [c for c in ciphers if c]
    out.append((bool(ciphers) and not bad,
                f"{len(ciphers)} ciphers offered, listed per protocol (-E)"
                + (f"; unparsed: {bad[:3]}" if bad else "")))
    no_fs = [c[1] for c in ciphers if not (c[0] == "TLS 1.3" or c[2].startswith(("ECDH", "DH")))]
    out.append((not no_fs, "every cipher has forward secrecy"
                + (f"; without: {', '.join(no_fs)}" if no_fs else "")))
    not_aead = [c[1] for c in ciphers if c[3] not in AEAD]
    out.append((not not_aead, "every cipher is an AEAD (no CBC, no RC4)"
                + (f"; not: {', '.join(not_aead)}" if not_aead else "")))
    rc4 = [c[1] for c in ciphers if "RC4" in c[1]]
    out.append((not rc4, "no RC4" + (f": {', '.join(rc4)}" if rc4 else "")))
    return out


def main():
    entries = json.load(open(sys.argv[1]))
    results = summarize(entries)
    for ok, what in results:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    failed = sum(1 for ok, _ in results if not ok)
    print(f"testssl summary: {len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
