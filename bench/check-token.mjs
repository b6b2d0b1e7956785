// Sanity check of one token response, used by bench/run.sh before each case.
// usage: node check-token.mjs <issuer> <opaque|ES256|EdDSA> <audience> <headers-file> <body-file> [ttl] [actor]
//   ttl    the configured lifetime in seconds (default 300)
//   actor  token exchange (RFC 8693): the acting client, which must be the
//          token's client_id and its act.sub; the response must carry
//          issued_token_type
//   headers-file "-": <body-file> is the JSON that grpc-exchange.py check
//          prints for a gRPC ExchangeResponse (no HTTP headers, no token_type)
// Prints "ok: ..." or one "WARN: ..." line per problem; always exits 0.
import { readFileSync } from 'node:fs';
import { createPublicKey, verify } from 'node:crypto';

const [issuer, expect, audience, headersFile, bodyFile, ttlArg, actor] = process.argv.slice(2);
const ttl = Number(ttlArg || 300);
const grpc = headersFile === '-';
const warn = [];
const raw = readFileSync(bodyFile, 'utf8');
const b64json = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));

if (!grpc) {
  const headers = readFileSync(headersFile, 'utf8').toLowerCase();
  if (!/^cache-control:.*no-store/m.test(headers)) warn.push('no "Cache-Control: no-store" header (RFC 6749 5.1)');
  if (!/^content-type:\s*application\/json/m.test(headers)) warn.push('Content-Type is not application/json');
}

let body = {};
try { body = JSON.parse(raw); } catch { warn.push(`body is not JSON: ${raw.slice(0, 120)}`); }
const tok = body.access_token;
if (typeof tok !== 'string' || !tok) warn.push('no access_token');
if (!grpc && String(body.token_type).toLowerCase() !== 'bearer') warn.push(`token_type=${body.token_type}`);
if (!Number.isInteger(body.expires_in)) warn.push('no integer expires_in');
else if (body.expires_in !== ttl) warn.push(`expires_in=${body.expires_in}, configured ${ttl}`);
const scope = grpc ? (body.scopes || []).join(' ') : body.scope;
if (scope !== undefined && scope !== 'orders:read') warn.push(`scope=${scope}`);
if (body.refresh_token) warn.push('response carries a refresh_token (client_credentials, RFC 6749 4.4.3, and this exchange: SHOULD NOT)');
if (actor && body.issued_token_type !== 'urn:ietf:params:oauth:token-type:access_token') {
  warn.push(`issued_token_type=${body.issued_token_type} (RFC 8693 2.2.1: required; access_token expected)`);
}

let summary = `token ${tok ? tok.length : 0} chars`;
if (typeof tok === 'string' && expect === 'opaque') {
  if (/^[\w-]+\.[\w-]+\.[\w-]+$/.test(tok)) warn.push('opaque client got a JWT-shaped token');
} else if (typeof tok === 'string') {
  const [h, p, s] = tok.split('.');
  try {
    const hdr = b64json(h), cl = b64json(p);
    summary += `, header ${JSON.stringify(hdr)}, claims ${Object.keys(cl).join(',')}`;
    if (hdr.alg !== expect) warn.push(`JWT alg=${hdr.alg}, expected ${expect}`);
    if (!/^(application\/)?at\+jwt$/i.test(hdr.typ || '')) warn.push(`JWT typ=${hdr.typ}, RFC 9068 wants at+jwt`);
    if (!hdr.kid) warn.push('JWT header has no kid');
    for (const c of ['iss', 'exp', 'aud', 'sub', 'client_id', 'iat', 'jti']) if (cl[c] === undefined) warn.push(`JWT lacks RFC 9068 claim ${c}`);
    if (cl.iss !== undefined && cl.iss !== issuer) warn.push(`iss=${cl.iss}, expected ${issuer}`);
    const aud = [].concat(cl.aud ?? []);
    if (audience !== '-' && !aud.includes(audience)) warn.push(`aud=${JSON.stringify(cl.aud)}, expected ${audience}`);
    if (cl.scope !== 'orders:read') warn.push(`scope claim=${JSON.stringify(cl.scope)}`);
    if (cl.exp - cl.iat !== ttl) warn.push(`exp-iat=${cl.exp - cl.iat}, configured ${ttl}`);
    if (actor) {
      if (cl.client_id !== actor) warn.push(`client_id=${cl.client_id}, expected the actor ${actor}`);
      if (cl.act?.sub !== actor) warn.push(`act=${JSON.stringify(cl.act)}, expected act.sub ${actor} (RFC 8693 4.1)`);
      else summary += `, act ${JSON.stringify(cl.act)}, sub ${cl.sub}`;
    }
    if (Math.abs(cl.iat - Date.now() / 1000) > 60) warn.push(`iat is ${cl.iat}, not now`);
    // Verify the signature against the JWKS advertised by discovery.
    let meta;
    for (const w of ['oauth-authorization-server', 'openid-configuration']) {
      const r = await fetch(`${issuer}/.well-known/${w}`);
      if (r.ok) { meta = await r.json(); break; }
    }
    if (!meta?.jwks_uri) warn.push('no discovery document with jwks_uri; signature not checked');
    else {
      const { keys } = await (await fetch(meta.jwks_uri)).json();
      const jwk = keys.find((k) => k.kid === hdr.kid);
      if (!jwk) warn.push(`kid ${hdr.kid} not in ${meta.jwks_uri}`);
      else {
        const key = createPublicKey({ key: jwk, format: 'jwk' });
        const data = Buffer.from(`${h}.${p}`), sig = Buffer.from(s, 'base64url');
        const good = hdr.alg === 'EdDSA' ? verify(null, data, key, sig)
          : verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
        if (good) summary += ', signature verified'; else warn.push('JWT signature does NOT verify against JWKS');
      }
    }
  } catch (e) { warn.push(`cannot decode/verify JWT: ${e.message}`); }
}
console.log(warn.length ? warn.map((w) => `WARN: ${w}`).join('\n') : `ok: ${summary}`);
