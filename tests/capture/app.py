"""A small application for the capture tests (stdlib only).

Listens on each --listen ADDR:PORT (`[::]:PORT` is dual-stack) and appends
one JSON line per request to --log: the listener, method, path, Host and
Authorization. A request with `X-Call: IP:PORT` makes the application call
IP:PORT itself, plainly (no proxy settings), at `X-Call-Path` with
`Host: <X-Call-Host>` and the Authorization it received, and answer with
what came back. `/__ping` answers without being recorded.
"""

import argparse
import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def split(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        authorization = self.headers.get("Authorization")
        if self.path == "/__ping":  # readiness probes of the tests: not recorded
            return self.answer({"ping": self.server.name})
        record = {
            "listener": self.server.name,
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "authorization": authorization,
        }
        with LOCK, open(self.server.log, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        body = {"received": authorization, "listener": self.server.name}
        target = self.headers.get("X-Call")
        if target:
            host, port = split(target)
            headers = {"Host": self.headers.get("X-Call-Host", target)}
            if authorization:
                headers["Authorization"] = authorization
            try:
                conn = http.client.HTTPConnection(host, port, timeout=10)
                conn.request("GET", self.headers.get("X-Call-Path", "/from-app"), headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode()
                body["call_status"] = resp.status
                try:
                    body["call"] = json.loads(text)
                except ValueError:
                    body["call"] = text
                conn.close()
            except OSError as err:
                body["call_error"] = str(err)
        self.answer(body)

    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, log):
        host, port = split(addr)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.name = addr
        self.log = log
        super().__init__((host, port), Handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", action="append", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    servers = [Server(addr, args.log) for addr in args.listen]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
