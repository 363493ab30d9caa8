#!/usr/bin/env node
// Compiles contracts/src/*.sol with the pinned solc-js (package-lock.json) into
// one JSON artifact per contract: {abi, bytecode, contractName,
// deployedBytecode, solc}. The Python side deploys and calls the contracts from
// these committed files, so no compiler is needed at run time; `make
// contracts-check` rebuilds them and fails if the committed ones differ, which
// is why the output must be byte-for-byte deterministic (sorted keys, fixed
// settings, source paths relative to contracts/).
//
// usage: node build.js [OUT_DIR]   (default: contracts/build)
"use strict";

const fs = require("fs");
const path = require("path");

const HERE = __dirname;
const SRC_DIR = path.join(HERE, "src");
const MODULES_DIR = path.join(HERE, "node_modules");
// Settings docs/ledger.md fixes: prague is what py-evm and anvil run.
const SETTINGS = {
  evmVersion: "prague",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
  },
};

// The ABI names `at` (UnstakeRequested, UnstakeNotDue, unstaking) come from
// docs/ledger.md, which Python code is written against; solc 0.8.37 warns that
// `at` becomes a keyword in 0.9. That warning is accepted, every other one in
// src/ fails the build.
const ACCEPTED_WARNINGS = ['"at" will be promoted to keyword'];

function fail(message, hint) {
  process.stderr.write(`error: ${message}\n`);
  if (hint) process.stderr.write(`hint: ${hint}\n`);
  process.exit(1);
}

function loadSolc() {
  try {
    return require(path.join(MODULES_DIR, "solc"));
  } catch (err) {
    fail(`solc is not installed in ${MODULES_DIR} (${err.code || err.message})`, "run `make contracts` (it runs contracts/install.sh)");
  }
}

// Imports resolve only inside node_modules (e.g. @openzeppelin/contracts/...);
// anything escaping it is refused rather than read.
function findImport(importPath) {
  const resolved = path.resolve(MODULES_DIR, importPath);
  if (!resolved.startsWith(MODULES_DIR + path.sep)) {
    return { error: `import outside node_modules refused: ${importPath}` };
  }
  try {
    return { contents: fs.readFileSync(resolved, "utf8") };
  } catch (err) {
    return { error: `cannot read ${importPath}: ${err.code || err.message}` };
  }
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = sortKeys(value[key]);
    return out;
  }
  return value;
}

function main() {
  const outDir = path.resolve(process.argv[2] || path.join(HERE, "build"));
  const solc = loadSolc();
  // src/ and its subdirectories (src/examples/): paths relative to src/, "/"-separated.
  const files = fs
    .readdirSync(SRC_DIR, { recursive: true })
    .map((f) => f.split(path.sep).join("/"))
    .filter((f) => f.endsWith(".sol"))
    .sort();
  if (files.length === 0) fail(`no .sol files in ${SRC_DIR}`);
  const sources = {};
  for (const f of files) sources[`src/${f}`] = { content: fs.readFileSync(path.join(SRC_DIR, f), "utf8") };

  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));

  // Errors fail the build; so do warnings about our own sources (keep them clean).
  let failed = false;
  for (const diag of output.errors || []) {
    const ours = Boolean(diag.sourceLocation && diag.sourceLocation.file.startsWith("src/"));
    const accepted = ACCEPTED_WARNINGS.some((text) => diag.message.includes(text));
    if (diag.severity === "info" || (diag.severity === "warning" && accepted)) continue;
    if (diag.severity === "error" || ours) failed = true;
    process.stderr.write(diag.formattedMessage + "\n");
  }
  if (failed) fail("compilation failed", "fix the diagnostics above");

  const version = solc.version();
  fs.mkdirSync(outDir, { recursive: true });
  const written = [];
  for (const file of Object.keys(sources)) {
    for (const [name, contract] of Object.entries(output.contracts[file] || {})) {
      const artifact = sortKeys({
        contractName: name,
        abi: contract.abi,
        bytecode: "0x" + contract.evm.bytecode.object,
        deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
        solc: version,
      });
      if (written.some((w) => w.startsWith(`${name} (`))) fail(`two contracts are named ${name}`, "artifacts are named by contract: rename one");
      const target = path.join(outDir, `${name}.json`);
      fs.writeFileSync(target, JSON.stringify(artifact, null, 2) + "\n");
      written.push(`${name} (${(contract.evm.deployedBytecode.object.length / 2) | 0} bytes deployed)`);
    }
  }
  process.stdout.write(`solc ${version}: ${written.join(", ")} -> ${path.relative(process.cwd(), outDir) || "."}\n`);
}

main();
