"""Origins with a capacity for the load-balancing flash crowd (bench/lbflash.sh):

    bench/lib/lbflash_origin.py LIMIT DELAY_S SIZE PORT [PORT...]

One asyncio process serving one origin per PORT, each with its own capacity: a GET while
LIMIT requests are already in flight at that origin is refused at once with 503 (what an
application server with LIMIT workers and no backlog does); otherwise it waits DELAY_S and
answers SIZE deterministic bytes with Cache-Control: no-store (uncacheable). Keep-alive.
GET /__count (not counted, never refused) answers per-port figures as JSON:
{"PORT": {"served": N, "refused": N, "max_in_flight": N}, ...}; POST /__reset zeroes them."""
import asyncio
import json
import sys

LIMIT = int(sys.argv[1])
DELAY = float(sys.argv[2])
SIZE = int(sys.argv[3])
PORTS = [int(p) for p in sys.argv[4:]]
ALPHA = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
BODY = bytes(ALPHA[(i * 7 + i // 61) % len(ALPHA)] for i in range(SIZE - 1)) + b"\n"
BUSY = b"busy\n"

stats = {p: {"served": 0, "refused": 0, "max_in_flight": 0} for p in PORTS}
in_flight = {p: 0 for p in PORTS}


def handler(port):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split()[:2]
                clen = 0
                close = False
                for ln in lines[1:]:
                    low = ln.lower()
                    if low.startswith("content-length:"):
                        clen = int(ln.split(":", 1)[1])
                    elif low.startswith("connection:") and "close" in low:
                        close = True
                if clen:
                    await reader.readexactly(clen)
                if path == "/__count" or path == "/__reset":
                    if path == "/__reset":
                        for s in stats.values():
                            s.update(served=0, refused=0, max_in_flight=0)
                    body = json.dumps({str(p): s for p, s in stats.items()}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Cache-Control: no-store\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                elif in_flight[port] >= LIMIT:
                    stats[port]["refused"] += 1
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                 b"Cache-Control: no-store\r\nContent-Length: %d\r\n\r\n" % len(BUSY) + BUSY)
                else:
                    in_flight[port] += 1
                    st = stats[port]
                    st["max_in_flight"] = max(st["max_in_flight"], in_flight[port])
                    try:
                        await asyncio.sleep(DELAY)
                    finally:
                        in_flight[port] -= 1
                    st["served"] += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Cache-Control: no-store\r\nContent-Length: %d\r\n\r\n" % len(BODY)
                                 + (BODY if method != "HEAD" else b""))
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
    return handle


async def main() -> None:
    servers = [await asyncio.start_server(handler(p), "127.0.0.1", p, backlog=4096) for p in PORTS]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
