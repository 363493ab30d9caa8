"""What proof-carrying results cost: verification, proving and on-chain gas.

One JSON line per measurement on stdout (the run's wall time on stderr), in
sections that can be run alone (``--sections verify``):

* ``verify``: Groth16 verification per proof for each installed backend
  (``zkp.verify.verify``, shape, curve, subgroup and pairing checks included),
  on the snarkjs cubic vector (1 public input) and on a
  ``zkp.testing.TrapdoorSetup`` key with ``--publics`` public inputs. ``warm``
  is a key already seen (its G2 points checked and converted once, as a node
  verifying many proofs of one circuit does); ``cold`` clears those caches
  before each call. Medians of ``--native N`` and ``--py-ecc N`` runs, wall
  time and process CPU time (``cpu_median_ms``: the cost of a proof however
  busy the machine is; ``met`` compares it with the target of under 10 ms
  with the native backend, issue 10). Also: parsing the three snarkjs files
  (``parse``) and ``vk_id``.
* ``prove``: for each shipped circuit (circuits/build, with the inputs of its
  example in examples/ and a job binding) and each installed prover
  (``zkp.prover``: native, snarkjs, python; python on ``poseidon_preimage``
  only unless ``--all``, it takes ~15 s a proof of ``private_stats``), in a
  child process of its own so memory figures are the prover's alone:
  ``cold_ms`` (the child's first proof: the circuit's WASM compiled and its key
  loaded, or node started), the median of ``--prove-runs`` warm proofs (wall
  and CPU time, the prover's child processes included), the witness alone
  (``zkp.witness`` in wasmtime for native and python; ``snarkjs wtns
  calculate`` for snarkjs, node's start included) and the peak resident
  memory (``peak_rss_mb``: the child's own peak, or for snarkjs the node
  process's; ``base_rss_mb``: an in-process prover's child before its first
  proof, its interpreter and imports). A proof's time includes its witness.
  Every proof is verified (a figure for a rejected proof would flatter the
  prover). One ``circuit`` line per circuit: constraints, public signals, vk id.
* ``gas``: on a fresh embedded chain (py-evm, the committed contracts deployed
  by ``ledger.deploy``): ``registerCircuit`` of the snarkjs cubic key and both
  shipped circuits' keys; ``verifyProof`` with 1 (cubic), 2
  (``poseidon_preimage``) and 6 (``private_stats``) public signals, measured as
  a transaction sent to the view function (21,000 and calldata included:
  what a transaction that only checks the proof costs; checked to return true
  by an ``eth_call`` first), ``met`` against the target of under 250,000 gas;
  ``claimWithProof`` with a real native proof of ``poseidon_preimage`` under an
  agreement the requester signed (its deposit funded); ``slash`` of a staked
  provider that signed a made-up output (its real proof of another output:
  the full pairing runs and fails); ``StatsConsumer.ask`` (the example DApp's
  request through ComputeRequests) and ``fulfill`` of ``private_stats`` with a
  real native proof (the provider paid, the DApp called back).

Run: .venv/bin/python bench/zk.py [--sections verify,prove,gas] [--native 200]
     [--py-ecc 3] [--publics 8] [--backends native,py_ecc] [--prove-runs 5]
     [--provers native,snarkjs,python] [--circuits poseidon_preimage,private_stats]
     [--circuits-dir DIR] [--all] [--quick]
``--quick`` (a smoke test): few runs, and the native prover only.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zkp import backends as zk_backends  # noqa: E402
from zkp.formats import (  # noqa: E402
    Proof,
    VerifyingKey,
    load_json_file,
    parse_proof,
    parse_public,
    parse_vk,
    vk_id,
)
from zkp.testing import TrapdoorSetup  # noqa: E402
from zkp.verify import backends, verify  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CUBIC = ROOT / "tests" / "data" / "vectors" / "groth16" / "cubic"
TARGET_NATIVE_MS = 10.0
TARGET_GAS = 250_000
#: The inputs each shipped circuit is proved with (its example job's, plus a binding).
EXAMPLE_INPUTS = {
    "poseidon_preimage": ROOT / "examples" / "zk-preimage" / "input.json",
    "private_stats": ROOT / "examples" / "zk-stats" / "input.json",
}
#: Circuits the pure-Python prover is timed on without --all (seconds a proof).
PYTHON_CIRCUITS = ("poseidon_preimage",)
PROVERS = ("native", "snarkjs", "python")
PROVE_DEADLINE_S = 600.0
CHILD_TIMEOUT_S = 3600.0

Record = dict[str, Any]
Emit = Callable[[Record], None]


def _ms(samples: Sequence[float], cpu: Sequence[float] = ()) -> Record:
    record = {
        "runs": len(samples),
        "median_ms": round(statistics.median(samples) * 1e3, 3),
        "min_ms": round(min(samples) * 1e3, 3),
        "max_ms": round(max(samples) * 1e3, 3),
    }
    if cpu:  # process CPU time: what a proof costs, whatever else the machine runs
        record["cpu_median_ms"] = round(statistics.median(cpu) * 1e3, 3)
    return record


def _clear_caches() -> None:
    """Forget every key seen: the next verification pays for its G2 checks again."""
    for name in backends():
        module = zk_backends.load(name)
        for attr in ("_prepared_vk", "_in_subgroup"):
            cache = getattr(module, attr, None)
            if cache is not None:
                cache.cache_clear()


def _time_verify(
    vk: VerifyingKey, proof: Proof, public: Sequence[int], backend: str, runs: int, cold: bool
) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(runs):
        if cold:
            _clear_caches()
        t, c = time.perf_counter(), time.process_time()
        verdict = verify(vk, proof, public, backend=backend)
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
        if not verdict.valid:  # a figure for a rejected proof would flatter the backend
            raise SystemExit(f"bench: {backend} rejected a valid proof: {verdict.reason}")
    return wall, cpu


def section_verify(args: argparse.Namespace, emit: Emit) -> None:
    vk_obj, proof_obj, public_obj = (
        load_json_file(CUBIC / name)
        for name in ("verification_key.json", "proof.json", "public.json")
    )
    samples = []
    for _ in range(args.native):
        t = time.perf_counter()
        parse_vk(vk_obj), parse_proof(proof_obj), parse_public(public_obj)
        samples.append(time.perf_counter() - t)
    emit({"bench": "zk", "kind": "parse", "what": "cubic vk+proof+public", **_ms(samples)})
    vk = parse_vk(vk_obj)
    vk_id(vk)  # imports eth-abi (~0.5 s): not part of the figure
    samples = []
    for _ in range(args.native):
        t = time.perf_counter()
        vk_id(vk)
        samples.append(time.perf_counter() - t)
    emit({"bench": "zk", "kind": "vk_id", "n_public": vk.n_public, **_ms(samples)})

    setup = TrapdoorSetup.new(args.publics, seed=1)
    public = [(i + 1) * 1_000_003 for i in range(args.publics)]
    statements = {
        "cubic": (vk, parse_proof(proof_obj), parse_public(public_obj)),
        f"trapdoor-{args.publics}": (setup.vk, setup.prove(public), public),
    }
    for backend in backends():
        if args.backends and backend not in args.backends:
            continue
        runs = args.native if backend == "native" else args.py_ecc
        for name, (key, proof, xs) in statements.items():
            for cache in ("warm", "cold"):
                n = runs if cache == "warm" or backend == "native" else max(1, runs // 3)
                _time_verify(key, proof, xs, backend, 1, cold=False)  # warm the key's caches
                record = {
                    "bench": "zk",
                    "kind": "verify",
                    "backend": backend,
                    "statement": name,
                    "n_public": key.n_public,
                    "cache": cache,
                    **_ms(*_time_verify(key, proof, xs, backend, n, cold=cache == "cold")),
                }
                if backend == "native":
                    record["target_ms"] = TARGET_NATIVE_MS
                    record["met"] = record["cpu_median_ms"] < TARGET_NATIVE_MS
                emit(record)


# --- prove ---------------------------------------------------------------------------


def _bench_binding() -> int:
    """The binding every ``prove`` proof carries (any job and pair would do)."""
    from zkp.binding import job_binding

    return job_binding("b3" * 32, "0x" + "11" * 20, "0x" + "22" * 20)


def example_inputs(name: str, binding: int) -> dict[str, Any]:
    """The inputs of ``name``'s example job (examples/), with ``binding`` added."""
    path = EXAMPLE_INPUTS.get(name)
    if path is None:
        raise LookupError(f"no example inputs for the circuit {name}")
    inputs = load_json_file(path)
    if not isinstance(inputs, dict) or "binding" in inputs:
        raise SystemExit(f"bench: {path} is not an input object without a binding")
    return {**inputs, "binding": str(binding)}


def _make_prover(name: str) -> Any:
    from zkp.prover import PythonProver, SnarkjsProver

    return SnarkjsProver() if name == "snarkjs" else PythonProver(name)


def _cpu_s() -> float:
    """CPU time of this process and of its children that have exited (node)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def _status_mb(field: str) -> float | None:
    """A memory figure of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _snarkjs_witness(circuit: Any, inputs: dict[str, Any], cli: Path) -> None:
    """``snarkjs wtns calculate``: the witness as snarkjs's prover makes it."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("bench: node is not on PATH")
    with tempfile.TemporaryDirectory(prefix="bench-zk-wtns-") as tmp:
        (Path(tmp) / "input.json").write_text(json.dumps(inputs))
        argv = [node, str(cli), "wtns", "calculate", str(circuit.wasm_path.resolve())]
        done = subprocess.run(
            [*argv, "input.json", "witness.wtns"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=PROVE_DEADLINE_S,
        )
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip()[-300:]
            raise SystemExit(f"bench: snarkjs wtns calculate failed: {said}")


def prove_child(name: str, prover_name: str, runs: int, root: Path | None = None) -> Record:
    """In a fresh process: one cold proof, ``runs`` witnesses, ``runs`` warm proofs,
    each verified; times in ms and memory in MiB, as one JSON-able dict."""
    from zkp.circuit import load_circuit, shipped_circuits
    from zkp.witness import compute_witness

    circuit = load_circuit(shipped_circuits(root)[name])
    inputs = example_inputs(name, _bench_binding())
    prover = _make_prover(prover_name)
    base_rss = _status_mb("VmRSS")

    def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
        t, c = time.perf_counter(), _cpu_s()
        out = fn()
        return time.perf_counter() - t, _cpu_s() - c, out

    def prove() -> tuple[float, float]:
        wall, cpu, (proof, public) = timed(
            lambda: prover.prove(circuit, inputs, deadline_s=PROVE_DEADLINE_S)
        )
        verdict = verify(circuit.vk, proof, public)
        if not verdict.valid:
            raise SystemExit(f"bench: {prover_name}'s proof of {name} is invalid: {verdict.reason}")
        return wall, cpu

    def witness() -> None:
        if prover_name == "snarkjs":
            _snarkjs_witness(circuit, inputs, prover.cli)
        else:
            compute_witness(circuit, inputs, deadline_s=PROVE_DEADLINE_S)

    cold_wall, cold_cpu = prove()
    w_wall, w_cpu = zip(*(timed(witness)[:2] for _ in range(runs)), strict=True)
    p_wall, p_cpu = zip(*(prove() for _ in range(runs)), strict=True)
    return {
        "cold_ms": round(cold_wall * 1e3, 1),
        "cold_cpu_ms": round(cold_cpu * 1e3, 1),
        "prove": _ms(p_wall, p_cpu),
        "witness": _ms(w_wall, w_cpu),
        "base_rss_mb": base_rss,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children_peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        ),
    }


def _run_child(name: str, prover: str, runs: int, root: Path | None) -> Record:
    """``prove_child`` in a fresh interpreter (bench/zk.py --prove-child)."""
    spec = f"{name}:{prover}:{runs}"
    argv = [sys.executable, str(Path(__file__).resolve()), "--prove-child", spec]
    if root is not None:
        argv += ["--circuits-dir", str(root)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"bench: proving {name} with {prover} took over {CHILD_TIMEOUT_S:g} s"
        ) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench: proving {name} with {prover} failed: {tail[:300]}")
    return json.loads(lines[-1])


def _skip(name: str, prover: str, args: argparse.Namespace) -> str | None:
    """Why ``prover`` is not timed on ``name`` in this run, or None."""
    if prover not in args.provers:
        return "not chosen (--provers)"
    if not _make_prover(prover).available():
        return "not installed"
    if prover == "python" and name not in PYTHON_CIRCUITS and not args.all:
        return "slow (seconds a proof): run with --all"
    return None


def section_prove(args: argparse.Namespace, emit: Emit) -> None:
    from zkp.circuit import load_circuit, shipped_circuits

    shipped = shipped_circuits(args.circuits_dir)
    if not shipped:
        where = args.circuits_dir or "circuits/build"
        raise SystemExit(f"bench: no circuits in {where} (run `make circuits`)")
    unknown = [name for name in args.circuits if name not in shipped]
    if unknown:
        raise SystemExit(f"bench: no circuit {', '.join(unknown)}; there are {', '.join(shipped)}")
    for name, path in shipped.items():
        if args.circuits and name not in args.circuits:
            continue
        circuit = load_circuit(path)
        emit(
            {
                "bench": "zk",
                "kind": "circuit",
                "circuit": name,
                "constraints": circuit.constraints,
                "n_public": circuit.vk.n_public,
                "vk_id": vk_id(circuit.vk),
                "wasm_bytes": circuit.wasm_path.stat().st_size,
                "zkey_bytes": circuit.zkey_path.stat().st_size,
            }
        )
        head = {"bench": "zk", "kind": "prove", "circuit": name, "constraints": circuit.constraints}
        if name not in EXAMPLE_INPUTS:
            for prover in PROVERS:
                emit({**head, "prover": prover, "skipped": "no example inputs"})
            continue
        for prover in PROVERS:
            why = _skip(name, prover, args)
            if why is not None:
                emit({**head, "prover": prover, "skipped": why})
                continue
            runs = args.py_ecc if prover == "python" else args.prove_runs
            got = _run_child(name, prover, runs, args.circuits_dir)
            in_node = prover == "snarkjs"
            emit(
                {
                    **head,
                    "prover": prover,
                    **got["prove"],
                    "cold_ms": got["cold_ms"],
                    "cold_cpu_ms": got["cold_cpu_ms"],
                    "witness_median_ms": got["witness"]["median_ms"],
                    "witness_cpu_median_ms": got["witness"]["cpu_median_ms"],
                    "peak_rss_mb": got["children_peak_rss_mb"] if in_node else got["peak_rss_mb"],
                    "rss_of": "node" if in_node else "process",
                    "base_rss_mb": None if in_node else got["base_rss_mb"],
                }
            )


# --- gas -----------------------------------------------------------------------------

MASK = 10**18
#: Gas limit of the verifyProof transaction (gas used does not depend on it).
VIEW_GAS = 1_000_000
CLAIM_JOB = "c1" * 32
SLASH_JOB = "5a" * 32
DATASET_CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


class GasBench:
    """A fresh embedded chain with the contracts: dev key 0 deploys (and is the
    treasury), 1 is a requester, 2 a provider, 3 a reporter and gateway, 4 a
    DApp's user. Every transaction must succeed, or the run stops."""

    def __init__(self) -> None:
        from eth_account import Account

        from ledger.chain import ChainClient
        from ledger.contracts import ESCROW, REQUESTS, TOKEN, load_artifact
        from ledger.deploy import deploy
        from ledger.vouchers import Domain

        self.chain = ChainClient.embedded()
        keys = self.chain.dev_keys()
        self.deployer, self.requester, self.provider, self.reporter, self.user = keys[:5]
        self.address = {k: Account.from_key(k).address for k in keys[:5]}
        self.deployment = deploy(
            self.chain,
            self.deployer,
            self.address[self.deployer],
            10**9 * MASK,
            unlock_delay_s=3600,
            unstake_delay_s=0,
        )
        d = self.deployment
        assert d.requests is not None
        self.token = self.chain.contract(d.token, load_artifact(TOKEN).abi)
        self.escrow = self.chain.contract(d.escrow, load_artifact(ESCROW).abi)
        self.requests = self.chain.contract(d.requests, load_artifact(REQUESTS).abi)
        self.contracts = [self.escrow, self.requests, self.token]
        self.domain = Domain(d.chain_id, d.escrow)

    def send(self, contract: Any, fn: str, *args: Any, key: bytes, gas: int | None = None) -> Any:
        """Mine ``contract.fn(*args)`` from ``key``: estimated (x1.25) unless ``gas``
        is given (proof-carrying calls: an estimate runs the pairing a dozen times)."""
        from ledger.ports import ChainError

        sender = self.address[key]
        abis = [c.abi for c in self.contracts]
        try:
            nonce = self.chain.pending_nonce(sender)
            tx = self.chain.transaction(
                contract, fn, *args, sender=sender, nonce=nonce, gas=gas, abis=abis
            )
            if gas is None:
                tx["gas"] = int(tx["gas"] * 1.25)
            mined = self.chain.wait_receipt(self.chain.send_transaction(tx, key), self.contracts)
        except ChainError as e:
            raise SystemExit(f"bench: {fn} failed: {e}") from None
        if not mined.status:
            why = self.chain.replay_revert(tx, mined.block_number, abis)
            raise SystemExit(f"bench: {fn} reverted: {why or 'no reason given'}")
        return mined

    def events(self, mined: Any, name: str) -> list[dict[str, Any]]:
        found = [dict(e.args) for e in mined.events if e.name == name]
        if not found:
            raise SystemExit(f"bench: no {name} event: the figure would not be of the real path")
        return found

    def fund(self, to_key: bytes, amount: int) -> None:
        from ledger.deploy import fund

        fund(self.chain, self.deployer, self.address[to_key], 0, amount, token=self.token.address)

    def register(self, vk: VerifyingKey) -> tuple[bytes, int]:
        """(circuit id, gas) of registering ``vk``."""
        from zkp.formats import vk_calldata

        k = vk_calldata(vk)
        args = (k["alpha1"], k["beta2"], k["gamma2"], k["delta2"], k["ic"])
        mined = self.send(self.escrow, "registerCircuit", args, key=self.deployer)
        return bytes.fromhex(vk_id(vk)), mined.gas_used

    def verify_gas(self, circuit_id: bytes, proof: list[int], public: Sequence[int]) -> int:
        """Gas of a transaction to ``verifyProof`` (a view), once a call said true."""
        args = (circuit_id, proof, list(public))
        if self.chain.call(self.escrow, "verifyProof", *args) is not True:
            raise SystemExit("bench: verifyProof rejected a valid proof")
        return self.send(
            self.escrow, "verifyProof", *args, key=self.reporter, gas=VIEW_GAS
        ).gas_used


def _prove(
    name: str, inputs: dict[str, Any], root: Path | None
) -> tuple[Any, list[int], tuple[int, ...]]:
    """(prover name, proof calldata, public signals) of the preferred installed prover."""
    from zkp.circuit import load_circuit, shipped_circuits
    from zkp.formats import proof_calldata
    from zkp.prover import select_prover

    circuit = load_circuit(shipped_circuits(root)[name])
    prover = select_prover()
    proof, public = prover.prove(circuit, inputs, deadline_s=PROVE_DEADLINE_S)
    if not verify(circuit.vk, proof, public).valid:
        raise SystemExit(f"bench: the {prover.name} prover's proof of {name} does not verify")
    return prover.name, proof_calldata(proof), public


def section_gas(args: argparse.Namespace, emit: Emit) -> None:
    from ledger.agreement import sign_agreement
    from ledger.contracts import STATS_CONSUMER, load_artifact
    from ledger.deploy import deposit
    from ledger.zkchain import proof_gas
    from ledger.zkclaims import claim_args, fulfill_args, sign_zk_result, slash_args
    from protocol.market import AgreementTerms
    from zkp.binding import SNARK_SCALAR_FIELD, job_binding
    from zkp.circuit import load_circuit, shipped_circuits
    from zkp.formats import proof_calldata

    b = GasBench()
    a = b.address

    def gas(call: str, circuit: str, n_public: int, used: int, **more: Any) -> None:
        record = {"bench": "zk", "kind": "gas", "call": call, "circuit": circuit}
        emit({**record, "n_public": n_public, "gas": used, **more})

    # registerCircuit: the snarkjs vector's key and both shipped circuits'
    keys = {"cubic": parse_vk(load_json_file(CUBIC / "verification_key.json"))}
    shipped = shipped_circuits(args.circuits_dir)
    for name in ("poseidon_preimage", "private_stats"):
        if name not in shipped:
            raise SystemExit(f"bench: the shipped circuit {name} is missing (make circuits)")
        keys[name] = load_circuit(shipped[name]).vk
    ids = {}
    for name, vk in keys.items():
        ids[name], used = b.register(vk)
        gas("registerCircuit", name, vk.n_public, used)
    _, used = b.register(keys["cubic"])
    gas("registerCircuit", "cubic", 1, used, again=True)

    def verify_record(name: str, proof: list[int], public: Sequence[int], prover: str) -> None:
        used = b.verify_gas(ids[name], proof, public)
        met = used < TARGET_GAS
        gas("verifyProof", name, len(public), used, prover=prover, target_gas=TARGET_GAS, met=met)

    cubic_proof = proof_calldata(parse_proof(load_json_file(CUBIC / "proof.json")))
    verify_record(
        "cubic", cubic_proof, parse_public(load_json_file(CUBIC / "public.json")), "snarkjs"
    )

    # claimWithProof: a requester-signed agreement, a funded deposit, a real proof
    b.fund(b.requester, 100 * MASK)
    deposit(b.chain, b.requester, b.escrow.address, b.token.address, 50 * MASK)
    requester, provider = a[b.requester], a[b.provider]
    binding = job_binding(CLAIM_JOB, requester, provider)
    prover, proof, public = _prove(
        "poseidon_preimage", example_inputs("poseidon_preimage", binding), args.circuits_dir
    )
    verify_record("poseidon_preimage", proof, public, prover)
    terms = AgreementTerms(
        job_id=CLAIM_JOB,
        requester_peer="12D3KooWBenchRequester",
        requester_account=requester,
        provider_peer="12D3KooWBenchProvider",
        provider_account=provider,
        price_total=str(7 * MASK),
        cpu=1,
        memory_mb=512,
        gpu=0,
        max_seconds=60,
        max_fuel=10**9,
        deadline=b.chain.block_timestamp() + 3600,
        spec_cid="bafkreibench",
        heartbeat_interval_ms=1000,
        chain_id=b.deployment.chain_id,
        verifying_contract=b.escrow.address,
        circuit_id=ids["poseidon_preimage"].hex(),
    )
    signature = sign_agreement(terms, b.requester)
    mined = b.send(
        b.escrow,
        "claimWithProof",
        *claim_args(terms, signature, proof, public),
        key=b.provider,
        gas=proof_gas("claimWithProof", len(public)),
    )
    b.events(mined, "ProofClaimed")
    gas("claimWithProof", "poseidon_preimage", len(public), mined.gas_used, prover=prover)

    # slash: a staked provider signed a made-up output (its proof is of the real one)
    b.fund(b.provider, 100 * MASK)
    b.send(b.token, "approve", b.escrow.address, 100 * MASK, key=b.provider)
    b.send(b.escrow, "stake", 100 * MASK, key=b.provider)
    binding = job_binding(SLASH_JOB, requester, provider)
    prover, proof, public = _prove(
        "poseidon_preimage", example_inputs("poseidon_preimage", binding), args.circuits_dir
    )
    made_up = [(public[0] + 1) % SNARK_SCALAR_FIELD, *public[1:]]
    circuit_id = ids["poseidon_preimage"]
    signed = sign_zk_result(
        b.domain, b.provider, SLASH_JOB, requester, provider, circuit_id, proof, made_up
    )
    mined = b.send(
        b.escrow,
        "slash",
        *slash_args(SLASH_JOB, requester, provider, circuit_id, signed, proof, made_up),
        key=b.reporter,
        gas=proof_gas("slash", len(made_up)),
    )
    b.events(mined, "Slashed")
    gas("slash", "poseidon_preimage", len(made_up), mined.gas_used, prover=prover)

    # a DApp buys statistics: StatsConsumer.ask, then fulfill with a real proof
    stats_inputs = example_inputs("private_stats", 0)
    dapp_address = b.chain.deploy(
        load_artifact(STATS_CONSUMER),
        [b.requests.address, ids["private_stats"], int(stats_inputs["commitment"]), DATASET_CID],
        b.deployer,
    )
    dapp = b.chain.contract(dapp_address, load_artifact(STATS_CONSUMER).abi)
    b.contracts.append(dapp)
    b.fund(b.user, 10 * MASK)
    b.send(b.token, "approve", dapp.address, 5 * MASK, key=b.user)
    deadline = b.chain.block_timestamp() + 3600
    threshold = int(stats_inputs["threshold"])
    mined = b.send(dapp, "ask", threshold, 5 * MASK, deadline, key=b.user)
    (requested,) = b.events(mined, "Requested")
    request_id = int(requested["requestId"])
    gas("StatsConsumer.ask", "private_stats", 6, mined.gas_used)
    job = b.chain.call(b.requests, "jobIdOf", request_id)
    binding = job_binding(job, b.requests.address, provider)
    prover, proof, public = _prove(
        "private_stats", {**stats_inputs, "binding": str(binding)}, args.circuits_dir
    )
    verify_record("private_stats", proof, public, prover)
    mined = b.send(
        b.requests,
        "fulfill",
        *fulfill_args(request_id, provider, proof, public),
        key=b.reporter,
        gas=proof_gas("fulfill", len(public)),
    )
    b.events(mined, "Fulfilled")
    if any(e.name == "CallbackFailed" for e in mined.events):
        raise SystemExit("bench: the StatsConsumer callback failed")
    if int(b.chain.call(dapp, "latestAnswered")) != request_id:
        raise SystemExit("bench: StatsConsumer did not store the answer")
    gas("fulfill", "private_stats", len(public), mined.gas_used, prover=prover, callback="stored")


#: name -> function(args, emit).
SECTIONS: dict[str, Callable[[argparse.Namespace, Emit], None]] = {
    "verify": section_verify,
    "prove": section_prove,
    "gas": section_gas,
}


def _names(text: str | None, known: Sequence[str], what: str, parser: Any) -> list[str]:
    if text is None:
        return list(known)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown or not names:
        parser.error(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}"
        )
    return names


def _child_spec(text: str) -> tuple[str, str, int]:
    name, prover, runs = text.split(":")
    if prover not in PROVERS or not 1 <= int(runs) <= 1000:
        raise argparse.ArgumentTypeError(f"not CIRCUIT:PROVER:RUNS: {text!r}")
    return name, prover, int(runs)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--native", type=int, default=None, help="native runs per case (200)")
    parser.add_argument(
        "--py-ecc", type=int, default=None, help="py-ecc runs per case, python prover runs (3)"
    )
    parser.add_argument("--publics", type=int, default=8, help="public inputs of the trapdoor key")
    parser.add_argument(
        "--backends", default=None, help="verify: comma-separated backends (all installed)"
    )
    parser.add_argument(
        "--prove-runs", type=int, default=None, help="warm proofs per native/snarkjs case (5)"
    )
    parser.add_argument(
        "--provers", default=None, help=f"comma-separated, from: {', '.join(PROVERS)} (all)"
    )
    parser.add_argument("--circuits", default=None, help="comma-separated shipped circuits (all)")
    parser.add_argument(
        "--circuits-dir",
        type=Path,
        default=None,
        help="a circuits build directory to measure instead of circuits/build",
    )
    parser.add_argument(
        "--all", action="store_true", help="the python prover on every circuit (minutes)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="few runs, the native prover only (a smoke test)"
    )
    parser.add_argument("--prove-child", type=_child_spec, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.native = args.native or (10 if args.quick else 200)
    args.py_ecc = args.py_ecc or (1 if args.quick else 3)
    args.prove_runs = args.prove_runs or (1 if args.quick else 5)
    if min(args.native, args.py_ecc, args.prove_runs) < 1:
        parser.error("--native, --py-ecc and --prove-runs must be at least 1")
    default_provers = "native" if args.quick and args.provers is None else args.provers
    args.provers = _names(default_provers, PROVERS, "prover(s)", parser)
    args.backends = _names(args.backends, backends(), "backend(s)", parser) if args.backends else []
    args.circuits = (
        [s.strip() for s in args.circuits.split(",") if s.strip()] if args.circuits else []
    )
    args.sections = _names(args.sections, list(SECTIONS), "section(s)", parser)
    return args


def main(argv: Sequence[str] | None = None) -> list[Record]:
    """Run the chosen sections, print one JSON line per measurement, return them."""
    args = parse_args(argv)
    if args.prove_child is not None:  # bench/zk.py runs itself per (circuit, prover)
        print(json.dumps(prove_child(*args.prove_child, args.circuits_dir)), flush=True)
        return []
    records: list[Record] = []

    def emit(record: Record) -> None:
        records.append(record)
        print(json.dumps(record), flush=True)

    t0 = time.perf_counter()
    for name in args.sections:
        SECTIONS[name](args, emit)
    wall = {"bench": "zk", "kind": "run", "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(wall), file=sys.stderr)
    return records


if __name__ == "__main__":
    main()
