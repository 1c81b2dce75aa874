#!/usr/bin/env python3
"""Opens N keep-alive connections that each send one request, read its answer and then
stay open and silent, as a load balancer's or a mobile client's idle connections do.

    scripts/idle-client.py HOST PORT N [PATH] [--hold SECONDS]

Prints "held N" once every connection has had its answer (and "failed K" for those that
did not), then holds them for SECONDS (default 30) or until killed, then prints how many
the server closed meanwhile ("closed K") and exits. Used by scripts/idle-memory.sh.
"""
import argparse
import select
import signal
import socket
import sys
import time


def answered(sock):
    """Reads one whole response (head + Content-Length body); False if the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return head.startswith(b"HTTP/1.1 200")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("n", type=int)
    parser.add_argument("path", nargs="?", default="/v1/leftpad/?str=test&len=50&chr=*")
    parser.add_argument("--hold", type=float, default=30)
    args = parser.parse_args()
    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode()
    held, failed = [], 0
    for _ in range(args.n):
        try:
            sock = socket.create_connection((args.host, args.port), timeout=10)
            sock.sendall(request)
            if answered(sock):
                held.append(sock)
                continue
            sock.close()
        except OSError:
            pass
        failed += 1
    print(f"held {len(held)}", flush=True)
    if failed:
        print(f"failed {failed}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    deadline = time.monotonic() + args.hold
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    # A connection the server closed is readable (end of file) now.
    poller = select.poll()
    for sock in held:
        poller.register(sock, select.POLLIN)
    closed = len(poller.poll(0))
    print(f"closed {closed}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
