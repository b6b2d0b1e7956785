// Sanity check of one token response, used by bench/run.sh before each case.
// usage: node check-token.mjs <issuer> <opaque|ES256|EdDSA> <audience> <headers-file> <body-file>
// Prints "ok: ..." or one "WARN: ..." line per problem; always exits 0.
import { readFileSync } from 'node:fs';
import { createPublicKey, verify } from 'node:crypto';

const [issuer, expect, audience, headersFile, bodyFile] = process.argv.slice(2);
const warn = [];
const headers = readFileSync(headersFile, 'utf8').toLowerCase();
const raw = readFileSync(bodyFile, 'utf8');
const b64json = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));

if (!/^cache-control:.*no-store/m.test(headers)) warn.push('no "Cache-Control: no-store" header (RFC 6749 5.1)');
if (!/^content-type:\s*application\/json/m.test(headers)) warn.push('Content-Type is not application/json');

let body = {};
try { body = JSON.parse(raw); } catch { warn.push(`body is not JSON: ${raw.slice(0, 120)}`); }
const tok = body.access_token;
if (typeof tok !== 'string' || !tok) warn.push('no access_token');
if (String(body.token_type).toLowerCase() !== 'bearer') warn.push(`token_type=${body.token_type}`);
if (!Number.isInteger(body.expires_in)) warn.push('no integer expires_in');
else if (body.expires_in !== 300) warn.push(`expires_in=${body.expires_in}, configured 300`);
if (body.scope !== undefined && body.scope !== 'orders:read') warn.push(`scope=${body.scope}`);
if (body.refresh_token) warn.push('client_credentials response carries a refresh_token (RFC 6749 4.4.3: SHOULD NOT)');

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
    if (cl.exp - cl.iat !== 300) warn.push(`exp-iat=${cl.exp - cl.iat}, configured 300`);
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
