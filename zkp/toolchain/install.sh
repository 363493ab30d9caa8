#!/usr/bin/env bash
# Installs the zero-knowledge toolchain (snarkjs 0.7.6, circom2 0.2.23) into
# .zktools/ with `npm ci` from the committed lock file. Both are GPL-3.0 and
# run only as external programs; the circuits use none of their code (the
# templates they include are this project's own, circuits/src/lib/).
# circuits/build.sh compiles and sets up the circuits with it, the snarkjs
# prover runs it as an external program, and the interop tests check our
# proofs with it. Nothing here is needed to verify a proof or to prove with the
# Python prover. Skips the install when .zktools/ already holds this lock file
# (the stamp records the sha256 of package.json and package-lock.json).
# ZKTOOLS_DIR overrides the destination.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${ZKTOOLS_DIR:-$(cd "$here/../.." && pwd)/.zktools}"
stamp="$dest/.installed-stamp"
snarkjs="$dest/node_modules/snarkjs/build/cli.cjs"
circom="$dest/node_modules/circom2/cli.js"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$snarkjs" ] && [ -f "$circom" ]; then
  touch "$stamp" # newer than the lock file, so make sees it as done
  echo "zktools are up to date in $dest"
  exit 0
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool is not installed; the zk toolchain (snarkjs, circom2) needs Node.js 20 and npm" >&2
    echo "hint: install Node.js 20 (it ships npm); verifying proofs and the Python prover need neither" >&2
    exit 1
  fi
done

echo "installing snarkjs and circom2 into $dest (npm ci)"
rm -rf "$dest/node_modules" "$stamp"
mkdir -p "$dest"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
# --ignore-scripts: both are plain JavaScript and WASM and need no install script.
(cd "$dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
test -f "$snarkjs" && test -f "$circom"
echo "$want" >"$stamp"
echo "snarkjs $(node -p "require('$dest/node_modules/snarkjs/package.json').version")" \
  "and circom2 $(node -p "require('$dest/node_modules/circom2/package.json').version") installed in $dest"
