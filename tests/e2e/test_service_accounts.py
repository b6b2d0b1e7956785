"""Service-account tokens of this API server, the groundwork of workload
identity: `kubectl create token --audience` issues a JWT that verifies against
the keys the API server publishes through OIDC discovery of its issuer, bound
to that audience and that service account.

(The token server does not accept them yet: `kubernetes_service_account` is
refused as not supported, docs/configuration.md.)"""

import json

import jwt
import pytest

ISSUER = "https://kubernetes.default.svc"


def keys(kube):
    discovery = json.loads(kube.run("get", "--raw", "/.well-known/openid-configuration").stdout)
    assert discovery["issuer"] == ISSUER
    assert discovery["jwks_uri"].endswith("/openid/v1/jwks")
    return jwt.PyJWKSet.from_dict(json.loads(kube.run("get", "--raw", "/openid/v1/jwks").stdout))


def test_a_token_for_an_audience_verifies_against_the_published_keys(kube, namespace):
    ns = namespace
    kube.run("create", "serviceaccount", "orders", "-n", ns)
    token = kube.run("create", "token", "orders", "-n", ns, "--audience", "tokenmesh-e2e",
                     "--duration", "10m").stdout.strip()
    jwks = keys(kube)
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="tokenmesh-e2e", issuer=ISSUER)
    assert claims["sub"] == f"system:serviceaccount:{ns}:orders"
    assert claims["kubernetes.io"]["namespace"] == ns
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == "orders"
    assert 540 <= claims["exp"] - claims["iat"] <= 660

    other = kube.run("create", "token", "orders", "-n", ns, "--audience", "someone-else").stdout.strip()
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(other, key, algorithms=["RS256"], audience="tokenmesh-e2e", issuer=ISSUER)


def test_no_token_for_a_service_account_that_does_not_exist(kube, namespace):
    proc = kube.run("create", "token", "nobody", "-n", namespace, "--audience", "tokenmesh-e2e", check=False)
    assert proc.returncode != 0 and "not found" in proc.stderr, proc.stderr
