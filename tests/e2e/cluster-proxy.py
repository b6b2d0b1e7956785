#!/usr/bin/env python3
"""The control plane's stand-in for the cluster network: an HTTP CONNECT proxy on a Unix socket.

kube-apiserver sends its traffic to the cluster (admission webhooks behind a
Service, for example) through the egress selector's "cluster" proxy. There is
no cluster network here (no kube-proxy, no Pods), so this proxy maps Service
addresses to local processes: ROUTES holds lines `<clusterIP>:<port> <host>:<port>`,
re-read on every CONNECT, and the target must be a loopback address. Anything
else is answered 502: no connection ever leaves the machine's loopback.

    cluster-proxy.py SOCKET ROUTES

(A Unix socket: the API server's egress selector dials HTTPConnect over TCP only
with a TLS client certificate.)
"""

import ipaddress
import os
import socket
import sys
import threading
from pathlib import Path


def routes(path):
    table = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return table
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#"):
            table[parts[0]] = parts[1]
    return table


def loopback_target(target):
    host, _, port = target.rpartition(":")
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return host.strip("[]"), int(port)
    except ValueError:
        pass
    return None


def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def handle(conn, route_file):
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk or len(head) > 16384:
                return
            head += chunk
        request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request) != 3 or request[0] != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        target = routes(route_file).get(request[1])
        addr = loopback_target(target) if target else None
        if addr is None:
            print(f"cluster-proxy: no loopback route for {request[1]}", file=sys.stderr, flush=True)
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            return
        try:
            upstream = socket.create_connection(addr, timeout=10)
        except OSError as err:
            print(f"cluster-proxy: {request[1]} -> {target}: {err}", file=sys.stderr, flush=True)
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            return
        upstream.settimeout(None)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        back = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
        back.start()
        pipe(conn, upstream)
        back.join()
        upstream.close()


def main():
    path, route_file = sys.argv[1], sys.argv[2]
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(64)
    print(f"cluster-proxy: listening on {path}, routes in {route_file}", file=sys.stderr, flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn, route_file), daemon=True).start()


if __name__ == "__main__":
    main()
