#!/usr/bin/env python3
"""Prints the mesh tour hop by hop and checks every hop got the right token.

    python3 report.py RUN_DIR

RUN_DIR/tour holds what run.sh collected: <client>.token (the token the
client got from the token server) and, per scenario, <scenario>.status and
<scenario>.json (the gateway's answer, with the next hops nested in it).
Exit status 0 only if every hop received the expected token.

The tokens are decoded without verification: each sidecar verified the token
before its service saw it.
"""

import base64
import json
import os
import sys

# What each scenario sends, and what each hop must receive. `mode` is how the
# sidecar in front of the previous service produced the token.
SCENARIOS = [
    {
        "name": "checkout",
        "title": "checkout: frontend -> gateway -> orders -> payments",
        "client": "frontend",
        "path": "/checkout",
        "hops": [
            {"service": "gateway", "mode": "direct",
             "expect": {"aud": ["gateway", "payments"], "sub": "frontend", "client_id": "frontend",
                        "scope": "orders:read orders:write payments:read payments:charge",
                        "act": None, "embedded": ["orders"]}},
            {"service": "orders", "mode": "embed", "policy": "embed-orders-token",
             "expect": {"aud": ["orders"], "sub": "frontend", "client_id": "frontend",
                        "scope": "orders:read orders:write payments:charge",
                        "act": None, "embedded": [], "same_grant": True}},
            {"service": "payments", "mode": "exchange", "policy": "exchange-orders-to-payments",
             "expect": {"aud": ["payments"], "sub": "frontend", "client_id": "orders-svc",
                        "scope": "payments:charge", "act": ["orders-svc"], "embedded": [],
                        "same_grant": True}},
        ],
    },
    {
        "name": "balance",
        "title": "balance: frontend -> gateway -> payments",
        "client": "frontend",
        "path": "/balance",
        "hops": [
            {"service": "gateway", "mode": "direct",
             "expect": {"aud": ["gateway", "payments"], "sub": "frontend", "client_id": "frontend",
                        "act": None}},
            {"service": "payments", "mode": "share", "policy": "share-with-payments",
             "expect": {"aud": ["gateway", "payments"], "sub": "frontend", "client_id": "frontend",
                        "scope": "orders:read orders:write payments:read payments:charge",
                        "act": None, "same_grant": True}},
        ],
    },
    {
        "name": "partner-balance",
        "title": "balance as partner: partner -> gateway -x payments",
        "client": "partner",
        "path": "/balance",
        "hops": [
            {"service": "gateway", "mode": "direct",
             "expect": {"aud": ["gateway", "payments"], "sub": "partner", "client_id": "partner",
                        "scope": "orders:read payments:read", "act": None, "embedded": []}},
            {"service": "payments", "mode": "refused", "status": 403},
        ],
    },
]

# Per mode: the headline, and a detail line ({policy} etc. filled in).
MODE_TEXT = {
    "direct": ("received the token {client} was issued (client_credentials), as sent", None),
    "share": ("SHARE: the {prev} sidecar passed the same token on",
              "policy {policy}; its aud already names {aud}; the token server said yes (CheckShare)"),
    "embed": ("EMBED: the {prev} sidecar swapped in the token embedded for {aud}",
              "policy {policy}; minted inside the caller's token, no token-server call"),
    "exchange": ("EXCHANGE: the {prev} sidecar exchanged its token for one for {aud}",
                 "policy {policy}; RFC 8693 token exchange, {actor} acting"),
    "refused": ("refused, as it should be: the {prev} sidecar answered {status}; the token never left",
                None),
}


def claims_of(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def audiences(claims):
    aud = claims.get("aud", [])
    return [aud] if isinstance(aud, str) else list(aud)


def act_chain(claims):
    """The actors, most recent first: act.sub, act.act.sub, ..."""
    chain, act = [], claims.get("act")
    while act:
        chain.append(act.get("sub"))
        act = act.get("act")
    return chain


def how_it_travelled(prev, cur):
    """What the evidence says the previous sidecar did (prev, cur: hop dicts)."""
    if cur["raw"] == prev["raw"]:
        return "share"
    embedded = prev["claims"].get("embedded_tokens", {})
    if any(embedded.get(a) == cur["raw"] for a in audiences(cur["claims"])):
        return "embed"
    if act_chain(cur["claims"]) and cur["claims"].get("sub") == prev["claims"].get("sub"):
        return "exchange"
    return "a new token"


def hops_of(status, body):
    """Flattens the nested answer into [{service, status, raw, claims, error}]."""
    hops, reply = [], {"status": status, "body": body}
    while reply is not None:
        body = reply.get("body")
        hop = {"status": reply.get("status"), "service": None, "raw": None, "claims": None,
               "error": reply.get("error")}
        if isinstance(body, dict):
            hop["service"] = body.get("service")
            authorization = body.get("received") or ""
            if authorization.startswith("Bearer "):
                hop["raw"] = authorization[len("Bearer "):]
                try:
                    hop["claims"] = claims_of(hop["raw"])
                except (ValueError, IndexError):
                    hop["error"] = "the token it received is not a JWT"
        elif body:
            hop["error"] = str(body)[:200]
        hops.append(hop)
        reply = body.get("next") if isinstance(body, dict) else None
    return hops


def describe(claims):
    """The claims that matter, on three lines."""
    act = " <- ".join(act_chain(claims)) or "-"
    lines = [
        f"aud {', '.join(audiences(claims))}   sub {claims.get('sub')}   "
        f"client_id {claims.get('client_id')}   act {act}",
        f"scope {claims.get('scope') or '-'}",
        f"jti {claims.get('jti', '')[:8]}   grant {(claims.get('grant_id') or '-')[:8]}   "
        f"lives {claims.get('exp', 0) - claims.get('iat', 0)}s",
    ]
    embedded = sorted(claims.get("embedded_tokens", {}))
    if embedded:
        lines[-1] += "   embedded_tokens: " + ", ".join(embedded)
    return lines


def check(expect, hop, first):
    """The differences between what a hop got and what it should have got."""
    claims, wrong = hop["claims"], []

    def differ(what, want, got):
        if want != got:
            wrong.append(f"{what}: expected {want!r}, got {got!r}")

    if "aud" in expect:
        differ("aud", sorted(expect["aud"]), sorted(audiences(claims)))
    for key in ("sub", "client_id", "scope"):
        if key in expect:
            differ(key, expect[key], claims.get(key))
    if "act" in expect:
        differ("act chain", expect["act"] or [], act_chain(claims))
    if "embedded" in expect:
        differ("embedded_tokens", sorted(expect["embedded"]),
               sorted(claims.get("embedded_tokens", {})))
    if expect.get("same_grant"):
        differ("grant_id (that of the caller's token)", first["claims"].get("grant_id"),
               claims.get("grant_id"))
    return wrong


def verdict(want, hop, prev, first, sent):
    """What is wrong with one hop (an empty list: nothing)."""
    if want["mode"] == "refused":
        if hop is None or hop["status"] != want["status"]:
            return [f"expected the call to be refused with {want['status']}, "
                    f"got {hop and hop['status']}"]
        if hop["service"] is not None:
            return [f"{want['service']} was reached"]
        return []
    if hop is None or hop["status"] != 200 or hop["claims"] is None:
        return [f"not reached with a token: status {hop and hop['status']}, "
                f"{(hop and hop.get('error')) or 'no token'}"]
    wrong = []
    if hop["service"] != want["service"]:
        wrong.append(f"answered by {hop['service']}, not {want['service']}")
    if want["mode"] == "direct":
        if hop["raw"] != sent:
            wrong.append("the gateway did not get the token that was sent")
    else:
        mode = how_it_travelled(prev, hop)
        if mode != want["mode"]:
            wrong.append(f"travelled by {mode}, expected {want['mode']}")
    return wrong + check(want["expect"], hop, first or hop)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    tour = os.path.join(sys.argv[1], "tour")

    def read(name):
        with open(os.path.join(tour, name)) as file:
            return file.read().strip()

    checked = failed = 0
    refusals = sum(hop["mode"] == "refused" for scenario in SCENARIOS for hop in scenario["hops"])
    indent = " " * 20
    for number, scenario in enumerate(SCENARIOS, 1):
        client, name = scenario["client"], scenario["name"]
        sent = read(f"{client}.token")
        text = read(f"{name}.json")
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        got = hops_of(int(read(f"{name}.status") or 0), body)
        print(f"[{number}] {scenario['title']}")
        print(f"    GET {scenario['path']} at the gateway's sidecar with {client}'s token")
        prev = first = None
        for index, want in enumerate(scenario["hops"]):
            hop = got[index] if index < len(got) else None
            wrong = verdict(want, hop, prev, first, sent)
            checked += 1
            failed += bool(wrong)
            has_token = hop is not None and hop["claims"] is not None
            fields = {
                "client": client,
                "prev": prev["service"] if prev else "?",
                "aud": want["service"],
                "policy": want.get("policy"),
                "actor": hop["claims"].get("client_id") if has_token else "?",
                "status": hop["status"] if hop else "?",
            }
            headline, detail = MODE_TEXT[want["mode"]]
            # "ok" is for a hop that got its token; a refusal that should happen needs no mark.
            mark = "WRONG" if wrong else "" if want["mode"] == "refused" else "ok"
            print(f"    {want['service']:<9} {mark:<5} {headline.format(**fields)}")
            if detail:
                print(indent + "(" + detail.format(**fields) + ")")
            if want["mode"] == "refused":
                if hop and hop.get("error"):
                    print(indent + f"the sidecar said: {hop['error']}")
            elif has_token:
                for line in describe(hop["claims"]):
                    print(indent + line)
            for problem in wrong:
                print(indent + f"!! {problem}")
            if has_token:
                first = first or hop
                prev = hop
        print()
    if failed:
        print(f"FAILED: {failed} of {checked} hops did not go as expected")
        return 1
    print(f"all {checked} hops as expected: {checked - refusals} got the expected token, "
          f"{refusals} refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
