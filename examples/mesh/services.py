#!/usr/bin/env python3
"""The three services of the mesh tour, standard library only.

    python3 services.py gateway  --port 9001 --proxy 127.0.0.1:15001
    python3 services.py orders   --port 9002 --proxy 127.0.0.1:15011
    python3 services.py payments --port 9003 --proxy 127.0.0.1:15021

Each service knows no OAuth. It answers every request with JSON saying what
`Authorization` it received and, when its route table says so, first calls
the next service *through its sidecar's outbound proxy* with the same
`Authorization` header; the sidecar decides which token actually travels
(shared, exchanged or embedded). The next service's answer is nested under
"next", so one response tells the whole path. It prints nothing.

The next hop is named by host (orders.local, payments.local): the sidecar
picks the policy by that host and connects where its --resolve says.
"""

import argparse
import http.client
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Request path -> the URL this service calls next (absent: it answers alone).
ROUTES = {
    "gateway": {
        "/checkout": "http://orders.local/orders",  # gateway -> orders -> payments
        "/balance": "http://payments.local/balance",  # gateway -> payments
    },
    "orders": {
        "/orders": "http://payments.local/charge",
    },
    "payments": {},
}

TIMEOUT = 15  # seconds for a call to the next hop


def call_through_proxy(proxy, url, authorization):
    """GET `url` through the HTTP proxy at `proxy` (host:port).

    Written out with http.client rather than urllib's ProxyHandler so that
    no NO_PROXY / system proxy setting can send the call around the sidecar.
    A proxied request is an ordinary request whose target is the absolute URL.
    """
    host, port = proxy.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    headers = {"Host": urlsplit(url).netloc}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        connection.request("GET", url, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = text.strip()
        return {"url": url, "status": response.status, "body": body}
    except OSError as err:
        return {"url": url, "status": None, "error": str(err)}
    finally:
        connection.close()


def handler(name, proxy):
    routes = ROUTES[name]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = urlsplit(self.path).path
            if path == "/healthz":
                return self.answer({"service": name, "ok": True})
            authorization = self.headers.get("Authorization")
            body = {"service": name, "path": path, "received": authorization}
            if path in routes:
                body["next"] = call_through_proxy(proxy, routes[path], authorization)
            self.answer(body)

        def answer(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass  # print nothing

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("service", choices=sorted(ROUTES))
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--proxy", required=True, help="the sidecar's outbound proxy, HOST:PORT")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(args.service, args.proxy))
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
