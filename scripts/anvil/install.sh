#!/usr/bin/env bash
# Installs anvil 1.7.1 (foundry), the real EVM node tests/component/test_anvil.py
# and the integration tests run, into .anvil/ with `npm ci` from the committed
# lock file. The npm platform package ships a native binary: node is needed to
# install it, not to run it. Skips the install when .anvil/ already holds this
# lock file (the stamp records the sha256 of package.json and package-lock.json).
# ANVIL_DIR overrides the destination.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${ANVIL_DIR:-$(cd "$here/../.." && pwd)/.anvil}"
stamp="$dest/.installed-stamp"
binary="$dest/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$binary" ]; then
  touch "$stamp" # newer than the lock file, so make sees it as done
  echo "anvil is up to date in $dest"
  exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "error: the pinned anvil package is for Linux x86_64, this is $(uname -s)-$(uname -m)" >&2
  echo "hint: install foundry's anvil 1.7.1 yourself and put it on PATH as 'anvil'" >&2
  exit 1
fi
if ! command -v npm >/dev/null; then
  echo "error: npm is not installed; installing anvil needs it (running anvil does not)" >&2
  echo "hint: install Node.js 20 (it ships npm)" >&2
  exit 1
fi

echo "installing anvil into $dest (npm ci)"
rm -rf "$dest/node_modules" "$stamp"
mkdir -p "$dest"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
# --ignore-scripts: the package is a prebuilt binary and needs no install script.
(cd "$dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
test -x "$binary"
echo "$want" >"$stamp"
echo "$("$binary" --version | head -n 1) installed in $dest"
