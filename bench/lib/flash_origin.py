"""Slow origin for the flash-crowd test: bench/lib/flash_origin.py PORT [DELAY_S] [SIZE]

Any GET sleeps DELAY_S (1 s) and then answers SIZE (64 KiB) deterministic bytes with
Content-Length and Cache-Control: public, max-age=60, keep-alive. It counts the requests per
path; GET /__count answers those counts as JSON at once (and is not counted)."""
import asyncio
import json
import sys
from collections import Counter

PORT = int(sys.argv[1])
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
SIZE = int(sys.argv[3]) if len(sys.argv) > 3 else 65536
ALPHA = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
BODY = bytes(ALPHA[(i * 7 + i // 61) % len(ALPHA)] for i in range(SIZE - 1)) + b"\n"
counts: Counter = Counter()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split()[:2]
            clen = 0
            for ln in lines[1:]:
                if ln.lower().startswith("content-length:"):
                    clen = int(ln.split(":", 1)[1])
            if clen:
                await reader.readexactly(clen)
            if path == "/__count":
                body = json.dumps(counts).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
            else:
                counts[path] += 1
                await asyncio.sleep(DELAY)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Cache-Control: public, max-age=60\r\nContent-Length: %d\r\n\r\n" % len(BODY)
                             + (BODY if method != "HEAD" else b""))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
