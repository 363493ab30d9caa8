#!/usr/bin/env bash
# Installs js-ipfs, the real IPFS daemon that tests/integration/test_ipfs_backend_real.py
# runs (no Kubo binary installs without internet), into .jsipfs/ with `npm ci` from the
# committed lock file. Skips the install when .jsipfs/ already holds this lock file
# (the stamp records the sha256 of package.json and package-lock.json).
# JSIPFS_DIR overrides the destination.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${JSIPFS_DIR:-$(cd "$here/../.." && pwd)/.jsipfs}"
stamp="$dest/.installed-stamp"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dest/node_modules/ipfs/package.json" ]; then
  touch "$stamp" # newer than the lock file, so make sees it as done
  echo "js-ipfs is up to date in $dest"
  exit 0
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool is not installed; js-ipfs needs Node.js 20 and npm" >&2
    echo "hint: install Node.js 20 (it ships npm), or run the tests with MASK_SKIP_JSIPFS=1" >&2
    exit 1
  fi
done

echo "installing js-ipfs into $dest (npm ci; a few minutes, ~300 MB)"
start=$(date +%s)
rm -rf "$dest/node_modules" "$stamp"
mkdir -p "$dest"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
# --ignore-scripts: the daemon needs none of its dependencies' install scripts
# (classic-level ships prebuilt binaries), and they would run unreviewed code.
(cd "$dest" && npm ci --ignore-scripts --omit=optional --no-audit --no-fund --loglevel=error)
echo "$want" >"$stamp"
version="$(node -p "require('$dest/node_modules/ipfs/package.json').version")"
echo "js-ipfs $version installed in $(($(date +%s) - start)) s ($(du -sh "$dest" | cut -f1) in $dest)"
