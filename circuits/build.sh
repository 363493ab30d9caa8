#!/usr/bin/env bash
# Compiles every circuit in circuits/src with the pinned circom2 (--O2) and runs
# its Groth16 setup with the pinned snarkjs (docs/zkp.md, "Trusted setup").
# The circuits include only this project's own templates (circuits/src/lib/:
# Poseidon, Bits, LessThan/GreaterThan), never circomlib:
#
#   circuits/src/NAME.circom + NAME.json (manifest: description, public names,
#   inputs) -> circuits/build/NAME/{circuit.json, circuit.r1cs, circuit.wasm,
#   circuit.zkey, verification_key.json}
#
# Phase 1 (powers of tau, bn128, 2^12 constraints) is made once into
# circuits/ptau/pot12_final.ptau and committed: preparing phase 2 takes minutes.
# It is only made again when that file is missing (or with ZK_NEW_PTAU=1).
# Phase 2 runs per circuit: setup, one contribution with fresh entropy from
# /dev/urandom (never written down: discarding it is what users must trust),
# then a public beacon. Each run therefore makes NEW proving and verification
# keys, hence a new circuit CID and vk id: register those.
#
# Usage: circuits/build.sh [NAME ...]   (default: every circuits/src/*.circom)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
tools="${ZKTOOLS_DIR:-$root/.zktools}"
snarkjs=(node "$tools/node_modules/snarkjs/build/cli.cjs")
circom=(node "$tools/node_modules/circom2/cli.js")
ptau="$here/ptau/pot12_final.ptau"
ptau_power=12
# A public, fixed beacon (the sha256 of this project's name): it cannot be
# chosen after seeing the contribution, and anyone can replay it.
beacon="$(printf 'maskd circuits beacon' | sha256sum | cut -d' ' -f1)"

if [ ! -f "$tools/node_modules/snarkjs/build/cli.cjs" ] || [ ! -f "$tools/node_modules/circom2/cli.js" ]; then
  echo "error: the zk toolchain is not installed in $tools" >&2
  echo "hint: run 'make zktools' (npm ci of zkp/toolchain/package-lock.json)" >&2
  exit 1
fi

entropy() { head -c 64 /dev/urandom | sha256sum | cut -d' ' -f1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ ! -f "$ptau" ] || [ "${ZK_NEW_PTAU:-0}" = 1 ]; then
  echo "powers of tau: bn128, 2^$ptau_power (prepare phase2 takes minutes)"
  "${snarkjs[@]}" powersoftau new bn128 "$ptau_power" "$work/pot_0.ptau"
  "${snarkjs[@]}" powersoftau contribute "$work/pot_0.ptau" "$work/pot_1.ptau" \
    --name="maskd build" -e="$(entropy)" >/dev/null
  "${snarkjs[@]}" powersoftau beacon "$work/pot_1.ptau" "$work/pot_2.ptau" "$beacon" 10 \
    -n="maskd beacon" >/dev/null
  "${snarkjs[@]}" powersoftau prepare phase2 "$work/pot_2.ptau" "$work/pot_final.ptau"
  "${snarkjs[@]}" powersoftau verify "$work/pot_final.ptau" | tail -n 1
  mkdir -p "$(dirname "$ptau")"
  mv "$work/pot_final.ptau" "$ptau"
fi

if [ "$#" -gt 0 ]; then
  names=("$@")
else
  names=()
  for src in "$here"/src/*.circom; do names+=("$(basename "$src" .circom)"); done
fi

for name in "${names[@]}"; do
  src="$here/src/$name.circom"
  meta="$here/src/$name.json"
  if [ ! -f "$src" ] || [ ! -f "$meta" ]; then
    echo "error: no circuit $name (want $src and $meta)" >&2
    exit 1
  fi
  echo "== $name"
  # circom2 runs in a WASI sandbox that sees only the current directory:
  # compile in a scratch dir holding the source and a copy of our lib/.
  cdir="$work/$name"
  mkdir -p "$cdir/out"
  cp -r "$here/src/lib" "$cdir/lib"
  cp "$src" "$cdir/circuit.circom"
  (cd "$cdir" && "${circom[@]}" circuit.circom --r1cs --wasm --O2 -o out >/dev/null)
  out="$cdir/out"
  "${snarkjs[@]}" groth16 setup "$out/circuit.r1cs" "$ptau" "$out/k0.zkey" >/dev/null
  "${snarkjs[@]}" zkey contribute "$out/k0.zkey" "$out/k1.zkey" \
    --name="maskd build" -e="$(entropy)" >/dev/null
  "${snarkjs[@]}" zkey beacon "$out/k1.zkey" "$out/circuit.zkey" "$beacon" 10 \
    -n="maskd beacon" >/dev/null
  "${snarkjs[@]}" zkey verify "$out/circuit.r1cs" "$ptau" "$out/circuit.zkey" | tail -n 1
  "${snarkjs[@]}" zkey export verificationkey "$out/circuit.zkey" "$out/verification_key.json" >/dev/null
  constraints="$("${snarkjs[@]}" r1cs info "$out/circuit.r1cs" | sed -n 's/.*# of Constraints: *\([0-9]*\).*/\1/p')"
  dest="$here/build/$name"
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$out/circuit.r1cs" "$out/circuit.zkey" "$out/verification_key.json" "$dest/"
  cp "$out/circuit_js/circuit.wasm" "$dest/circuit.wasm"
  node -e '
    const fs = require("fs");
    const [meta, vkPath, name, constraints, dest] = process.argv.slice(1);
    const m = JSON.parse(fs.readFileSync(meta, "utf8"));
    const vk = JSON.parse(fs.readFileSync(vkPath, "utf8"));
    if (vk.nPublic !== m.public.length) {
      console.error(`error: ${name}: the circuit has ${vk.nPublic} public signals, ${meta} names ${m.public.length}`);
      process.exit(1);
    }
    if (m.public[m.public.length - 1] !== "binding") {
      console.error(`error: ${name}: the last public signal must be "binding"`);
      process.exit(1);
    }
    const manifest = {
      name, description: m.description, public: m.public, outputs: m.outputs,
      constraints: Number(constraints), protocol: "groth16", curve: "bn128", inputs: m.inputs,
    };
    fs.writeFileSync(dest, JSON.stringify(manifest, null, 2) + "\n");
  ' "$meta" "$dest/verification_key.json" "$name" "$constraints" "$dest/circuit.json"
  echo "$name: $constraints constraints -> $dest"
done
