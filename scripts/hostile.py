#!/usr/bin/env python3
"""Hostile clients for scripts/soak.sh: everything a server on the internet meets, at
once, for a bounded time, against one HOST:PORT on loopback.

    scripts/hostile.py HOST PORT SECONDS [--hold N]

Kinds (all run concurrently until SECONDS pass):
  slowloris   heads sent one byte at a time, never finished
  vanish      clients that close mid-request or right after sending, before reading
  flood       bursts of pipelined requests on connections that then never read
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


async def each_connection(kind, body, pause=0.05):
    """Until the deadline: connect, count, run `body(reader, writer)`, close abruptly or
    politely at random. A refused connection is counted and retried after `pause`."""
    while left() > 0:
        conn = await connect()
        if not conn:
            await asyncio.sleep(pause)
            continue
        reader, writer = conn
        counts[kind] += 1
        try:
            await body(reader, writer)
        except Exception:
            pass
        await close(writer)


async def slowloris_one(reader, writer):
    for byte in b"GET /v1/leftpad/?str=slow&len=9 HTTP/1.1\r\nHost: h\r\nX-Slow: ":
        if left() <= 0:
            break
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.5)
    await asyncio.wait_for(reader.read(4096), max(0.1, left()))


async def vanish_one(_reader, writer):
    payload = REQUEST * random.randint(1, 50)
    writer.write(payload[: random.randint(1, len(payload))])
    await writer.drain()
    await asyncio.sleep(0.005)


async def flood_one(_reader, writer):
    # A burst of pipelined requests, then hold on without ever reading: the server must
    # stop at the socket buffers and drop the connection at --write-timeout.
    for _ in range(20):
        writer.write(REQUEST * 100)
        await asyncio.wait_for(writer.drain(), 1)
    await asyncio.sleep(min(10, max(0, left())))


OVERSIZED = [
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Many: y\r\n" * 500 + b"\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999\r\n\r\n" + b"x" * 1000,
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
]


async def send_and_read(reader, writer, data, wait):
    writer.write(data)
    await writer.drain()
    await asyncio.wait_for(reader.read(4096), wait)


async def oversized_one(reader, writer):
    await send_and_read(reader, writer, random.choice(OVERSIZED), 2)


async def garbage_one(reader, writer):
    await send_and_read(reader, writer, os.urandom(random.randint(1, 4096)), 1)


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
    kinds = [("slowloris", slowloris_one, 20, 0.1), ("vanish", vanish_one, 4, 0.05),
             ("flood", flood_one, 3, 0.1), ("oversized", oversized_one, 2, 0.05),
             ("garbage", garbage_one, 2, 0.05)]
    tasks = [each_connection(kind, body, pause) for kind, body, n, pause in kinds for _ in range(n)]
    tasks += [churn(), hold()]
    await asyncio.gather(*tasks)


asyncio.run(main())
print("hostile " + " ".join(f"{k}={v}" for k, v in counts.items()))
