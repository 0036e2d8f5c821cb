#!/usr/bin/env python3
"""Verifies waitroom's `Waitroom-Admission` header in a Python checkout.

    from verify import verify, Refused
    claims = verify(token, "https://gw.example/_waitroom/jwks.json",
                    issuer="https://gw.example", audience="checkout")

`verify` returns the token's claims, or raises `Refused`: answer 403.
`protect(app, ...)` wraps a WSGI app with that check. From a shell:

    python3 verify.py --jwks URL --issuer ISS --audience AUD TOKEN

prints the claims as JSON and exits 0, or prints why the token is refused
and exits 1.

Needs PyJWT and cryptography (Debian: python3-jwt python3-cryptography;
pip: "pyjwt[crypto]").
"""

import argparse
import json
import sys
import threading
import time
import urllib.request

import jwt

# How long a fetched JWKS is trusted before it is fetched again. The
# gateway's operators publish a new key at least this long before it signs.
JWKS_MAX_AGE_SECS = 300
# An unknown kid fetches the JWKS again, but not more often than this, so
# tokens with made-up kids cannot make every request fetch it.
REFETCH_MIN_INTERVAL_SECS = 10
FETCH_TIMEOUT_SECS = 5
# Allowed difference between the gateway's clock and ours.
LEEWAY_SECS = 30


class Refused(Exception):
    """The request carries no valid admission: answer 403."""


class Jwks:
    """The Ed25519 keys of one JWKS URL by kid, fetched when first needed,
    again when older than `max_age`, and again on an unknown kid."""

    def __init__(self, url, max_age=JWKS_MAX_AGE_SECS):
        self.url = url
        self.max_age = max_age
        self._keys = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def key(self, kid):
        with self._lock:
            now = time.monotonic()
            if now - self._fetched_at > self.max_age or (
                kid not in self._keys
                and now - self._fetched_at >= REFETCH_MIN_INTERVAL_SECS
            ):
                self._refresh(now)
            key = self._keys.get(kid)
        if key is None:
            raise Refused(f"no key {kid!r} in the gateway's JWKS")
        return key

    def _refresh(self, now):
        try:
            with urllib.request.urlopen(self.url, timeout=FETCH_TIMEOUT_SECS) as res:
                doc = json.load(res)
            keys = {
                k["kid"]: jwt.PyJWK(k, algorithm="EdDSA").key
                for k in doc["keys"]
                if k.get("kty") == "OKP" and k.get("crv") == "Ed25519" and k.get("kid")
            }
        except (OSError, ValueError, KeyError, TypeError, jwt.PyJWKError) as e:
            # Keep the keys we have (a JWKS that cannot be fetched for a
            # moment must not refuse every fan) and try again shortly.
            self._fetched_at = max(self._fetched_at, now - self.max_age + REFETCH_MIN_INTERVAL_SECS)
            if not self._keys:
                raise Refused(f"cannot fetch the gateway's JWKS: {e}") from e
            return
        self._keys, self._fetched_at = keys, now


_jwks_by_url = {}
_jwks_by_url_lock = threading.Lock()


def _jwks(url):
    with _jwks_by_url_lock:
        return _jwks_by_url.setdefault(url, Jwks(url))


def verify(token, jwks_url, issuer, audience):
    """The claims of a valid admission token (`room`, `ep`, `seq`, `vid`,
    `mode`, ...); raises `Refused` for anything else."""
    if not token:
        raise Refused("no Waitroom-Admission header")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as e:
        raise Refused(f"not a JWS: {e}") from e
    if header.get("alg") != "EdDSA":
        raise Refused(f"algorithm {header.get('alg')!r} is not EdDSA")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Refused("the token names no key (kid)")
    key = _jwks(jwks_url).key(kid)
    try:
        return jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],  # never "none" or HS256 with a public key
            issuer=issuer,
            audience=audience,
            leeway=LEEWAY_SECS,
            options={"require": ["exp", "iat", "iss", "aud"]},
        )
    except jwt.InvalidTokenError as e:
        raise Refused(str(e)) from e


def protect(app, jwks_url, issuer, audience):
    """A WSGI app that answers 403 unless the request carries a valid
    admission, and else calls `app` with the claims in
    `environ["waitroom.admission"]`. For example:

        from wsgiref.simple_server import make_server
        make_server("", 8000, protect(checkout, JWKS_URL, ISSUER, "checkout")).serve_forever()
    """

    def guarded(environ, start_response):
        try:
            environ["waitroom.admission"] = verify(
                environ.get("HTTP_WAITROOM_ADMISSION"), jwks_url, issuer, audience
            )
        except Refused as e:
            print(f"admission refused: {e}", file=environ["wsgi.errors"])
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Please join through the waiting room.\n"]
        return app(environ, start_response)

    return guarded


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify a Waitroom-Admission token.")
    parser.add_argument("--jwks", required=True, help="the gateway's JWKS URL")
    parser.add_argument("--issuer", required=True, help="the gateway's admission.issuer")
    parser.add_argument("--audience", required=True, help="this checkout's room audience")
    parser.add_argument("token", help="the Waitroom-Admission header's value")
    args = parser.parse_args(argv)
    try:
        claims = verify(args.token, args.jwks, args.issuer, args.audience)
    except Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
