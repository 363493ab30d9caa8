#!/usr/bin/env bash
# Installs the pinned solc-js and OpenZeppelin Contracts (package-lock.json)
# into contracts/node_modules with `npm ci`, which build.js compiles with.
# Skips the install when node_modules already holds this lock file (the stamp
# records the sha256 of package.json and package-lock.json).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stamp="$here/node_modules/.installed-stamp"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && [ -f "$here/node_modules/solc/package.json" ] \
  && [ -f "$here/node_modules/@openzeppelin/contracts/package.json" ]; then
  touch "$stamp" # newer than the lock file, so make sees it as done
  exit 0
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool is not installed; compiling the contracts needs Node.js 20 and npm" >&2
    echo "hint: install Node.js 20 (it ships npm); the committed contracts/build/*.json need no compiler" >&2
    exit 1
  fi
done

echo "installing solc and @openzeppelin/contracts into $here/node_modules (npm ci)"
# --ignore-scripts: neither package needs an install script to compile.
(cd "$here" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "$want" >"$stamp"
