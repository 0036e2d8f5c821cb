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

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --no-fail-fast "$@"
else
  exec cargo test --no-fail-fast "$@"
fi
