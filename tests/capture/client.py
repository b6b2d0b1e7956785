"""One HTTP request from inside a network namespace (stdlib only):
`client.py METHOD URL [--header NAME:VALUE]... [--data FORM]` prints
{"status", "headers", "body"} as JSON, or {"error"} when no answer came."""

import argparse
import json
import urllib.error
import urllib.request


def fields(headers):
    """Header fields by lower-case name; a repeated one combined with ", " (RFC 9110 §5.3)."""
    out = {}
    for name, value in headers.items():
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("method")
    parser.add_argument("url")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--data")
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    data = args.data.encode() if args.data is not None else None
    request = urllib.request.Request(args.url, data=data, headers=headers, method=args.method)
    # No proxy settings of the environment: the capture is what is tested.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=args.timeout) as resp:
            out = {"status": resp.status, "headers": fields(resp.headers), "body": resp.read().decode()}
    except urllib.error.HTTPError as err:
        out = {"status": err.code, "headers": fields(err.headers), "body": err.read().decode()}
    except (OSError, urllib.error.URLError) as err:
        out = {"error": str(err)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
