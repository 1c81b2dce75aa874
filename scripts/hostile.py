#!/usr/bin/env python3
"""Hostile clients for scripts/soak.sh: everything a server on the internet meets, at
once, for a bounded time, against one HOST:PORT on loopback.

    scripts/hostile.py HOST PORT SECONDS [--hold N]

Kinds (all run concurrently until SECONDS pass):
  slowloris   heads sent one byte at a time, never finished
  vanish      clients that close mid-request or right after sending, before reading
  flood       pipelined requests in bulk on connections that never read
  oversized   heads and request lines over the limits
  garbage     random bytes
  churn       connect/close as fast as possible (counted)
  hold        N idle keep-alive connections held open for the whole run
Prints one line of counts at the end. Exits 0 unless it could not run at all.
"""
import asyncio
import os
import random
import sys
import time

HOST, PORT, SECONDS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
HOLD = int(sys.argv[sys.argv.index("--hold") + 1]) if "--hold" in sys.argv else 0
DEADLINE = time.monotonic() + SECONDS
counts = {k: 0 for k in ["slowloris", "vanish", "flood", "oversized", "garbage", "churn", "hold", "refused"]}
REQUEST = b"GET /v1/leftpad/?str=hostile&len=40&chr=%21 HTTP/1.1\r\nHost: h\r\n\r\n"


def left():
    return DEADLINE - time.monotonic()


async def connect():
    try:
        return await asyncio.wait_for(asyncio.open_connection(HOST, PORT), 2)
    except (OSError, asyncio.TimeoutError):
        counts["refused"] += 1
        return None


async def close(writer):
    try:
        writer.transport.abort() if random.random() < 0.5 else writer.close()
    except Exception:
        pass


async def slowloris():
    while left() > 0:
        conn = await connect()
        if not conn:
            await asyncio.sleep(0.1)
            continue
        reader, writer = conn
        counts["slowloris"] += 1
        try:
            for byte in b"GET /v1/leftpad/?str=slow&len=9 HTTP/1.1\r\nHost: h\r\nX-Slow: ":
                if left() <= 0:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)
            await asyncio.wait_for(reader.read(4096), max(0.1, left()))
        except Exception:
            pass
        await close(writer)


async def vanish():
    while left() > 0:
        conn = await connect()
        if not conn:
            await asyncio.sleep(0.05)
            continue
        _, writer = conn
        counts["vanish"] += 1
        try:
            payload = REQUEST * random.randint(1, 50)
            writer.write(payload[: random.randint(1, len(payload))])
            await writer.drain()
        except Exception:
            pass
        await close(writer)
        await asyncio.sleep(0.005)


async def flood():
    while left() > 0:
        conn = await connect()
        if not conn:
            await asyncio.sleep(0.1)
            continue
        _, writer = conn
        counts["flood"] += 1
        try:
            for _ in range(200):
                if left() <= 0:
                    break
                writer.write(REQUEST * 100)
                await asyncio.wait_for(writer.drain(), 1)
        except Exception:
            pass
        await close(writer)


async def oversized():
    bodies = [
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Many: y\r\n" * 500 + b"\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999\r\n\r\n" + b"x" * 1000,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ]
    while left() > 0:
        conn = await connect()
        if not conn:
            await asyncio.sleep(0.05)
            continue
        reader, writer = conn
        counts["oversized"] += 1
        try:
            writer.write(random.choice(bodies))
            await writer.drain()
            await asyncio.wait_for(reader.read(4096), 2)
        except Exception:
            pass
        await close(writer)


async def garbage():
    while left() > 0:
        conn = await connect()
        if not conn:
            await asyncio.sleep(0.05)
            continue
        reader, writer = conn
        counts["garbage"] += 1
        try:
            writer.write(os.urandom(random.randint(1, 4096)))
            await writer.drain()
            await asyncio.wait_for(reader.read(4096), 1)
        except Exception:
            pass
        await close(writer)


async def churn():
    while left() > 0 and counts["churn"] < 10000:
        conn = await connect()
        if conn:
            counts["churn"] += 1
            await close(conn[1])


async def hold():
    held = []
    for _ in range(HOLD):
        if left() <= 0:
            break
        conn = await connect()
        if conn:
            held.append(conn[1])
            counts["hold"] += 1
    await asyncio.sleep(max(0, left()))
    for writer in held:
        await close(writer)


async def main():
    tasks = [slowloris() for _ in range(20)] + [vanish() for _ in range(4)] + [flood() for _ in range(3)]
    tasks += [oversized() for _ in range(2)] + [garbage() for _ in range(2)] + [churn(), hold()]
    await asyncio.gather(*tasks)


asyncio.run(main())
print("hostile " + " ".join(f"{k}={v}" for k, v in counts.items()))
