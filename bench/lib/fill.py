"""Fill a cache with distinct objects: bench/lib/fill.py PORT PREFIX COUNT [CONNS [BODY]]

GETs http://127.0.0.1:PORT{PREFIX}{i} for i in 0..COUNT-1 over CONNS keep-alive connections
(one request in flight per connection, selectors, no dependencies) and prints one JSON line:
requests, ok (status 200 with a complete body of BODY bytes, default 1024), bad statuses,
short bodies (any other size), and how many
responses say they were cache hits (moat: `Cache-Status: moat; hit`; Varnish: `X-Varnish`
with two transaction ids; anything else: `Age` > 0), plus the elapsed seconds."""
import json
import selectors
import socket
import sys
import time


def main() -> None:
    port, prefix, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    conns = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    body = int(sys.argv[5]) if len(sys.argv) > 5 else 1024
    sel = selectors.DefaultSelector()
    nxt = 0
    st = dict(requests=0, ok=0, bad_status=0, short=0, hits=0, errors=0, sizes={})

    def send(s, c):
        nonlocal nxt
        if nxt >= count:
            sel.unregister(s)
            s.close()
            return
        c["i"] = nxt
        nxt += 1
        c["buf"] = b""
        s.sendall(f"GET {prefix}{c['i']} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())

    t0 = time.monotonic()
    for _ in range(min(conns, count)):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = {}
        sel.register(s, selectors.EVENT_READ, c)
        send(s, c)
    while sel.get_map():
        for key, _ in sel.select(10):
            s, c = key.fileobj, key.data
            data = s.recv(262144)
            if not data:
                st["errors"] += 1
                sel.unregister(s)
                s.close()
                continue
            c["buf"] += data
            buf = c["buf"]
            he = buf.find(b"\r\n\r\n")
            if he < 0:
                continue
            head = buf[:he].decode("latin-1").lower()
            lines = head.split("\r\n")
            clen = None
            for ln in lines[1:]:
                if ln.startswith("content-length:"):
                    clen = int(ln.split(":", 1)[1])
            if clen is None:
                st["errors"] += 1   # the origin always sends Content-Length; nothing chunked expected
                sel.unregister(s)
                s.close()
                continue
            if len(buf) < he + 4 + clen:
                continue
            st["requests"] += 1
            status = lines[0].split()[1]
            hit = False
            for ln in lines[1:]:
                if ln.startswith("cache-status:") and "; hit" in ln:
                    hit = True
                elif ln.startswith("x-varnish:") and len(ln.split(":", 1)[1].split()) == 2:
                    hit = True
                elif ln.startswith("age:") and ln.split(":", 1)[1].strip() not in ("0", ""):
                    hit = True
            st["hits"] += hit
            if status != "200":
                st["bad_status"] += 1
            elif clen != body:
                st["short"] += 1
            else:
                st["ok"] += 1
            send(s, c)
    st["elapsed_s"] = round(time.monotonic() - t0, 3)
    del st["sizes"]
    print(json.dumps(st))


if __name__ == "__main__":
    main()
