"""A small load loop that runs inside the client pod (test_operations.py passes this file's text to
`kubectl exec -i client -- python3 -c`). It calls orders, which calls payments through its sidecar
(an exchange), which calls ledger through its own (a share), until a line arrives on stdin; prints
"started" after the first answer, then a summary as JSON.

argv[1] is a JSON object:
  url           orders' URL
  token         a token for orders to send every time (cached exchanges), or
  token_url, client_id, client_secret, ca
                a fresh gateway token (and its embedded token for orders) every `fresh` requests
  fresh         how many requests share one token (with token_url)
"""

import base64
import json
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

config = json.loads(sys.argv[1])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()


def claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def kid(token):
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("kid")


def fresh_token(context):
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials", "client_id": config["client_id"],
        "client_secret": config["client_secret"], "scope": "orders:read payments:charge"}).encode()
    with urllib.request.urlopen(config["token_url"], data=form, timeout=10, context=context) as answer:
        gateway = json.load(answer)["access_token"]
    return claims(gateway)["embedded_tokens"]["shop/orders"]


context = ssl.create_default_context(cadata=config["ca"]) if config.get("ca") else None
ok, failures, kids, issue_errors, n = 0, [], {}, 0, 0
token = config.get("token")
started = time.monotonic()
while not stop.is_set():
    if config.get("token_url") and n % config.get("fresh", 1) == 0:
        try:
            token = fresh_token(context)
        except (OSError, KeyError, ValueError) as err:
            # The token server may be away (restarts); what counts is what the mesh does with tokens.
            issue_errors += 1
            if token is None:
                time.sleep(0.2)
                continue
    n += 1
    if n == 2:
        print("started", flush=True)
    request = urllib.request.Request(config["url"], headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            body = json.load(answer)
        forwarded = body["payments"]["received"]
        if forwarded["aud"] != "shop/payments":
            raise ValueError(f"payments received aud {forwarded['aud']}")
        if body["payments"]["ledger"]["received"]["jti"] != forwarded["jti"]:
            raise ValueError("ledger did not receive the token payments shared")
        ok += 1
        kids[kid(token)] = kids.get(kid(token), 0) + 1
    except urllib.error.HTTPError as err:
        failures.append({"at": round(time.monotonic() - started, 1), "status": err.code,
                         "body": err.read().decode(errors="replace")[:300]})
    except (OSError, KeyError, ValueError) as err:
        failures.append({"at": round(time.monotonic() - started, 1), "error": f"{type(err).__name__}: {err}"})
    time.sleep(config.get("pause", 0.05))
print(json.dumps({"ok": ok, "failed": len(failures), "failures": failures[:10], "kids": kids,
                  "issue_errors": issue_errors, "seconds": round(time.monotonic() - started, 1)}))
