#!/usr/bin/env python3
"""mmdb.py: a small MaxMind DB writer in pure Python, for tests.

It writes a country database (the GeoLite2-Country shape: {"country": {"iso_code": "DE"}})
mapping given networks to ISO codes, in the documented MaxMind DB format 2.0
(https://maxmind.github.io/MaxMind-DB/):

- a binary search tree over the address bits, one node per prefix step, each node two records
  (bit 0, bit 1) of 24, 28 or 32 bits; a record below node_count points at a node, equal to
  node_count means "no data", above it points into the data section
  (offset = record - node_count - 16);
- 16 zero bytes, then the data section (typed, self-describing values);
- "\\xab\\xcd\\xefMaxMind.com" and the metadata map.

The tree is always IPv6 (ip_version 6); IPv4 networks live under ::/96, as libmaxminddb
expects. Used by tests/e2e (geo steering) and to regenerate the unit test's database:

    python3 tests/e2e/mmdb.py tests/data/geoip-test.mmdb   # the networks in TEST_NETWORKS
    python3 tests/e2e/mmdb.py out.mmdb 127.0.0.0/8=DE 2001:db8::/32=JP
"""
import ipaddress
import struct
import sys
import time

# The networks of the committed test database tests/data/geoip-test.mmdb (unit test
# tests/unit/core/test_geoip.c and the e2e geo tests rely on these).
TEST_NETWORKS = [
    ("127.0.0.0/16", "DE"),
    ("127.0.0.2/32", "FR"),   # more specific than 127.0.0.0/16
    ("127.1.0.0/16", "JP"),
    ("127.2.0.0/16", "SG"),
    ("10.0.0.0/8", "US"),
    ("2001:db8::/32", "SG"),
    ("2001:db8:1::/48", "FR"),
]

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"


# ---- data section encoding ----

def _ctrl(type_num, size):
    """Control byte(s) for a value of <type_num> with payload <size>."""
    if size < 29:
        first, ext = size, b""
    elif size < 29 + 256:
        first, ext = 29, bytes([size - 29])
    elif size < 285 + 65536:
        first, ext = 30, struct.pack(">H", size - 285)
    else:
        first, ext = 31, struct.pack(">I", size - 65821)[1:]
    if type_num <= 7:
        return bytes([(type_num << 5) | first]) + ext
    return bytes([first, type_num - 7]) + ext


def _uint(type_num, v):
    b = v.to_bytes((v.bit_length() + 7) // 8, "big") if v else b""
    return _ctrl(type_num, len(b)) + b


class U16(int):
    """An int written as uint16 (libmaxminddb checks the metadata's integer types)."""


class U32(int):
    """An int written as uint32."""


class U64(int):
    """An int written as uint64."""


def encode(v):
    """Encodes a Python value: str, dict, list, bool, U16/U32/U64, or int (the smallest of
    uint16/32/64 that holds it)."""
    if isinstance(v, U16):
        return _uint(5, v)
    if isinstance(v, U32):
        return _uint(6, v)
    if isinstance(v, U64):
        return _uint(9, v)
    if isinstance(v, bool):
        return _ctrl(14, 1 if v else 0)
    if isinstance(v, str):
        b = v.encode()
        return _ctrl(2, len(b)) + b
    if isinstance(v, bytes):
        return _ctrl(4, len(v)) + v
    if isinstance(v, int):
        if v < 0:
            raise ValueError("negative integers are not supported")
        if v < 1 << 16:
            return _uint(5, v)
        if v < 1 << 32:
            return _uint(6, v)
        return _uint(9, v)
    if isinstance(v, dict):
        out = _ctrl(7, len(v))
        for k, val in v.items():
            out += encode(str(k)) + encode(val)
        return out
    if isinstance(v, (list, tuple)):
        out = _ctrl(11, len(v))
        for x in v:
            out += encode(x)
        return out
    raise TypeError("cannot encode %r" % (v,))


# ---- search tree ----

class _Node:
    __slots__ = ("kids", "num")

    def __init__(self):
        self.kids = [None, None]  # None (no data), _Node, or ("data", offset)
        self.num = -1


def _bits(net):
    """The path of <net> in a 128-bit tree: IPv4 under ::/96."""
    if net.version == 4:
        addr, plen = int(net.network_address), 96 + net.prefixlen
    else:
        addr, plen = int(net.network_address), net.prefixlen
    return [(addr >> (127 - i)) & 1 for i in range(plen)]


def _insert(root, path, leaf):
    if not path:
        raise ValueError("a network of prefix length 0 is not supported")
    node = root
    for depth, bit in enumerate(path):
        last = depth == len(path) - 1
        if last:
            # Anything below this record is replaced: the caller inserts shorter prefixes
            # first, so what was here is less specific.
            node.kids[bit] = leaf
            return
        kid = node.kids[bit]
        if not isinstance(kid, _Node):
            # A leaf (or nothing) is split into a node whose halves both keep it.
            n = _Node()
            n.kids = [kid, kid]
            node.kids[bit] = n
            kid = n
        node = kid


def _record_bytes(size, left, right):
    if size == 24:
        return left.to_bytes(3, "big") + right.to_bytes(3, "big")
    if size == 28:
        mid = ((left >> 24) & 0x0F) << 4 | ((right >> 24) & 0x0F)
        return (left & 0xFFFFFF).to_bytes(3, "big") + bytes([mid]) + \
            (right & 0xFFFFFF).to_bytes(3, "big")
    if size == 32:
        return left.to_bytes(4, "big") + right.to_bytes(4, "big")
    raise ValueError("record size must be 24, 28 or 32")


def build(networks, record_size=24, database_type="Moat-Test-Country", epoch=None):
    """Returns the bytes of a database mapping each (cidr, iso_code) of <networks> to
    {"country": {"iso_code": code}}. More specific networks win over less specific ones."""
    nets = [(ipaddress.ip_network(c, strict=False), cc) for c, cc in networks]
    nets.sort(key=lambda x: (x[0].prefixlen + (96 if x[0].version == 4 else 0)))

    data = b""
    offsets = {}
    for _, cc in nets:
        if cc not in offsets:
            offsets[cc] = len(data)
            data += encode({"country": {"iso_code": cc}})

    root = _Node()
    for net, cc in nets:
        _insert(root, _bits(net), ("data", offsets[cc]))

    # Number the nodes breadth first (any order works; the root must be 0).
    order = [root]
    i = 0
    while i < len(order):
        n = order[i]
        n.num = i
        for k in n.kids:
            if isinstance(k, _Node):
                order.append(k)
        i += 1
    node_count = len(order)
    if node_count + 16 + len(data) >= 1 << record_size:
        raise ValueError("database too large for %d-bit records" % record_size)

    def rec(k):
        if k is None:
            return node_count
        if isinstance(k, _Node):
            return k.num
        return node_count + 16 + k[1]

    tree = b"".join(_record_bytes(record_size, rec(n.kids[0]), rec(n.kids[1])) for n in order)
    meta = {
        "binary_format_major_version": U16(2),
        "binary_format_minor_version": U16(0),
        "build_epoch": U64(int(time.time()) if epoch is None else epoch),
        "database_type": database_type,
        "description": {"en": "moat test country database (tests/e2e/mmdb.py)"},
        "ip_version": U16(6),
        "languages": ["en"],
        "node_count": U32(node_count),
        "record_size": U16(record_size),
    }
    return tree + b"\x00" * 16 + data + METADATA_MARKER + encode(meta)


def write(path, networks, record_size=24, epoch=None):
    with open(path, "wb") as f:
        f.write(build(networks, record_size=record_size, epoch=epoch))


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    record_size = 24
    args = argv[2:]
    if args and args[0].startswith("--record-size="):
        record_size = int(args[0].split("=", 1)[1])
        args = args[1:]
    if args:
        nets = [tuple(a.split("=", 1)) for a in args]
    else:
        nets = TEST_NETWORKS
    # A fixed epoch keeps the committed file reproducible byte for byte.
    write(argv[1], nets, record_size=record_size, epoch=1700000000)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
