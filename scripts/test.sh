#!/usr/bin/env bash
# The test command: sets up what the tests need on a fresh machine, then
# runs the whole suite. Usage: bash scripts/test.sh [extra nextest/cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is required (install Rust from your package manager or rustup)" >&2
  exit 1
fi

# The browser test drives Debian's Chromium through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing chromium and chromium-driver for the browser test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "scripts/test.sh: the browser test needs chromium and chromium-driver; install them (as root: apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
fi

# The hostile-path tests run a real nginx (Debian's nginx-light) as an
# upstream that normalises paths; it runs in the foreground on a free port
# with its own temp directory, so no nginx service is started or touched.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing nginx-light for the hostile-path tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    echo "scripts/test.sh: the hostile-path tests need nginx; install it (as root: apt-get install nginx-light)" >&2
    exit 1
  fi
fi

# The checkout-integration test runs docs/checkout/verify.py, which needs
# PyJWT with cryptography (EdDSA). Debian's packages go to /usr/bin/python3,
# which the test also tries when another python3 comes first on PATH.
python_has_pyjwt() {
  local python
  for python in python3 /usr/bin/python3; do
    command -v "$python" >/dev/null 2>&1 && "$python" -c 'import jwt, cryptography' >/dev/null 2>&1 && return 0
  done
  return 1
}
if ! python_has_pyjwt; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing python3-jwt and python3-cryptography for the checkout verifier test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-jwt python3-cryptography >/dev/null
  else
    echo "scripts/test.sh: the checkout verifier test needs python3 with PyJWT and cryptography; install them (as root: apt-get install python3 python3-jwt python3-cryptography)" >&2
    exit 1
  fi
fi

# The shared-store tests need redis-server (they also start their own on
# free ports) and a Redis answering at WAITROOM_TEST_REDIS_URL (default
# 127.0.0.1:6379); start one when none answers. Each test uses its own key
# prefix, so an existing Redis is never disturbed.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing redis-server for the shared-store tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "scripts/test.sh: the shared-store tests need redis-server; install it (as root: apt-get install redis-server)" >&2
    exit 1
  fi
fi
if [ -z "${WAITROOM_TEST_REDIS_URL:-}" ] && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "scripts/test.sh: no Redis at 127.0.0.1:6379; starting one (not persisted) for the tests"
  redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --no-fail-fast "$@"
else
  exec cargo test --no-fail-fast "$@"
fi
