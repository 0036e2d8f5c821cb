#!/usr/bin/env bash
# The test command: sets up what the tests need on a fresh machine, then
# runs the whole suite. Usage: bash scripts/test.sh [extra nextest/cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is required (install Rust from your package manager or rustup)" >&2
  exit 1
fi

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --no-fail-fast "$@"
else
  exec cargo test --no-fail-fast "$@"
fi
