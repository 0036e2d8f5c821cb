// Verifies waitroom's `Waitroom-Admission` header in a Node checkout, with
// the `jose` package (npm install jose).
//
//   import { verify, Refused } from './verify.mjs';
//   const claims = await verify(req.headers['waitroom-admission'],
//     'https://gw.example/_waitroom/jwks.json', 'https://gw.example', 'checkout');
//
// `verify` resolves to the token's claims, or rejects with `Refused`:
// answer 403. From a shell:
//
//   node verify.mjs --jwks URL --issuer ISS --audience AUD TOKEN
//
// prints the claims as JSON and exits 0, or prints why the token is
// refused and exits 1.

import { createRemoteJWKSet, jwtVerify } from 'jose';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

/** The request carries no valid admission: answer 403. */
export class Refused extends Error {}

// One key set per JWKS URL. jose fetches it when first needed, again when
// older than five minutes (the gateway's operators publish a new key at
// least that long before it signs), and again on an unknown kid, at most
// every ten seconds so that made-up kids cannot make every request fetch.
const keySets = new Map();
function keySet(jwksUrl) {
  let keys = keySets.get(jwksUrl);
  if (!keys) {
    keys = createRemoteJWKSet(new URL(jwksUrl), {
      cacheMaxAge: 5 * 60_000,
      cooldownDuration: 10_000,
      timeoutDuration: 5_000,
    });
    keySets.set(jwksUrl, keys);
  }
  return keys;
}

/** The claims of a valid admission token (`room`, `ep`, `seq`, `vid`, `mode`, ...). */
export async function verify(token, jwksUrl, issuer, audience) {
  if (!token) throw new Refused('no Waitroom-Admission header');
  try {
    const { payload } = await jwtVerify(token, keySet(jwksUrl), {
      algorithms: ['EdDSA'], // never "none" or HS256 with a public key
      issuer,
      audience,
      requiredClaims: ['exp', 'iat'],
      clockTolerance: 30, // seconds between the gateway's clock and ours
    });
    return payload;
  } catch (e) {
    throw new Refused(e.code ? `${e.code}: ${e.message}` : String(e));
  }
}

/**
 * A node:http handler that answers 403 unless the request carries a valid
 * admission, and else calls `handler(req, res, claims)`. For example:
 *
 *   http.createServer(protect(checkout, JWKS_URL, ISSUER, 'checkout')).listen(8000);
 */
export function protect(handler, jwksUrl, issuer, audience) {
  return async (req, res) => {
    let claims;
    try {
      claims = await verify(req.headers['waitroom-admission'], jwksUrl, issuer, audience);
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      console.error(`admission refused: ${e.message}`);
      res.writeHead(403, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('Please join through the waiting room.\n');
      return;
    }
    return handler(req, res, claims);
  };
}

async function main() {
  const { values, positionals } = parseArgs({
    options: {
      jwks: { type: 'string' },
      issuer: { type: 'string' },
      audience: { type: 'string' },
    },
    allowPositionals: true,
  });
  if (!values.jwks || !values.issuer || !values.audience || positionals.length !== 1) {
    console.error('usage: node verify.mjs --jwks URL --issuer ISS --audience AUD TOKEN');
    return 2;
  }
  try {
    const claims = await verify(positionals[0], values.jwks, values.issuer, values.audience);
    console.log(JSON.stringify(claims));
    return 0;
  } catch (e) {
    if (!(e instanceof Refused)) throw e;
    console.error(`refused: ${e.message}`);
    return 1;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main();
}
