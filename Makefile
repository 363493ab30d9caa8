# maskd: `make demo` runs the demo, `make test` runs every test.
# Both create the virtualenv and install what they need on a fresh Debian.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
STAMP := $(VENV)/.installed-stamp
JSIPFS_STAMP := .jsipfs/.installed-stamp

.PHONY: all install jsipfs anvil zktools circuits demo test test-fast test-integration lint bench lock clean wasm

all: test

$(STAMP): pyproject.toml constraints.txt scripts/system-deps.sh
	./scripts/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# js-ipfs, the real IPFS daemon the external-backend test runs (no Kubo binary
# installs offline): `npm ci` from scripts/jsipfs/package-lock.json into .jsipfs/.
$(JSIPFS_STAMP): scripts/jsipfs/package.json scripts/jsipfs/package-lock.json scripts/jsipfs/install.sh
	./scripts/jsipfs/install.sh

jsipfs: $(JSIPFS_STAMP)

# anvil 1.7.1 (foundry), the real EVM node the chain tests run: `npm ci` from
# scripts/anvil/package-lock.json into .anvil/ (a native binary; seconds).
ANVIL_STAMP := .anvil/.installed-stamp
$(ANVIL_STAMP): scripts/anvil/package.json scripts/anvil/package-lock.json scripts/anvil/install.sh
	./scripts/anvil/install.sh

anvil: $(ANVIL_STAMP)

# The zero-knowledge toolchain (docs/zkp.md): snarkjs 0.7.6 and circom2 0.2.23,
# `npm ci` from zkp/toolchain/package-lock.json into .zktools/.
# The snarkjs prover and the interop tests run it; verifying needs none of it.
ZKTOOLS_STAMP := .zktools/.installed-stamp
$(ZKTOOLS_STAMP): zkp/toolchain/package.json zkp/toolchain/package-lock.json zkp/toolchain/install.sh
	./zkp/toolchain/install.sh

zktools: $(ZKTOOLS_STAMP)

# Compile circuits/src/*.circom and run each one's Groth16 setup into
# circuits/build/ (committed). NEW keys each time: a new circuit CID and vk id.
circuits: $(ZKTOOLS_STAMP)
	./circuits/build.sh

demo: $(STAMP)
	$(VENV)/bin/mask demo

# Everything: unit, property, component, tui and the multi-process tests.
test: $(STAMP) $(JSIPFS_STAMP) $(ANVIL_STAMP) $(ZKTOOLS_STAMP)
	$(PYTEST) -q -p no:cacheprovider tests

# The inner loop: no real processes.
test-fast: $(STAMP)
	$(PYTEST) -q -p no:cacheprovider tests/unit tests/property tests/component tests/tui -m "not integration"

test-integration: $(STAMP) $(JSIPFS_STAMP) $(ANVIL_STAMP) $(ZKTOOLS_STAMP)
	$(PYTEST) -q -p no:cacheprovider tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/gossip.py
	$(PY) bench/storage.py
	$(PY) bench/jobs.py
	$(PY) bench/settlement.py

# Rebuild every example's .wasm from its C source (clang + wasi-libc; see
# examples/*/Makefile). The builds are reproducible: unchanged sources give
# byte-identical files.
wasm:
	@set -e; for mk in examples/*/Makefile; do $(MAKE) -C $$(dirname $$mk); done

lock: $(STAMP)
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^maskd' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .devnet .demo .jsipfs .zktools

# The Solidity contracts (docs/ledger.md): `make contracts` compiles
# contracts/src with the pinned solc-js into contracts/build/*.json, which are
# committed; `make contracts-check` rebuilds into a temp dir and fails if the
# committed artifacts differ.
CONTRACTS_STAMP := contracts/node_modules/.installed-stamp
.PHONY: contracts contracts-check

$(CONTRACTS_STAMP): contracts/package.json contracts/package-lock.json contracts/install.sh
	./contracts/install.sh

contracts: $(CONTRACTS_STAMP)
	node contracts/build.js

contracts-check: $(CONTRACTS_STAMP)
	@tmp="$$(mktemp -d)" && trap 'rm -rf "$$tmp"' EXIT && \
	node contracts/build.js "$$tmp" && \
	if diff -r contracts/build "$$tmp" >/dev/null; then \
	  echo "contracts/build matches a fresh build of contracts/src"; \
	else \
	  diff -rq contracts/build "$$tmp" | sed "s|$$tmp|<fresh build>|"; \
	  echo "error: contracts/build differs from a fresh build of contracts/src" >&2; \
	  echo "hint: run 'make contracts' and commit contracts/build" >&2; \
	  exit 1; \
	fi
