"""The provider's zk-groth16 runs, through the real provider shell, with a real prover.

The market test drives a real RequesterService and ProviderService over the
harness's in-memory bus and streams; the provider's worker is the real
WasmWorker with its ZkExecutor and a real prover, and the requester checks
the result with its real zk check (``StorageOutputs``: the proof against its
own key, the binding of this job). Only the payload transfer is a fake that
copies CAR files between the two nodes' private stores.

The other tests drive the worker itself (fetch, execute, store, as the
provider service does) with one hostile case per way a zk run can fail, and
check each ends as a typed failure with its logs, never an exception, with
the provider still able to prove the next job.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import wasmtime

from ledger.agreement import AccountKeys
from ledger.vouchers import Domain
from ledger.zkclaims import recover_zk_result_signer
from maskd.config import load_config
from maskd.identity import load_or_create
from maskd.jobfiles import BundleCache, PrivateFiles
from maskd.node import Node
from maskd.payloads import StorageOutputs
from maskd.wasm_worker import WasmWorker
from maskd.zk_worker import ProverState, ZkExecutor, claim_signer
from protocol.messages import BIDS_TOPIC
from scheduler.jobstate import JobState
from scheduler.market import InlineStore, ProviderService
from scheduler.provider import ProviderConfig, ProviderCore
from scheduler.spec import ContentRef, JobSpec, Price, Resources, Verify, ZkCircuit
from scheduler.store import JobStore
from storage.carfile import export_car, write_path_car
from storage.exporter import ExportLimits
from tests.component.harness import PRICES, Market
from tests.factories import Peer
from zkp.binding import job_binding
from zkp.circuit import circuit_cid, load_circuit
from zkp.formats import load_json_file, parse_proof, parse_public, proof_calldata, vk_id
from zkp.poseidon import poseidon
from zkp.prover import select_prover
from zkp.verify import verify

pytestmark = pytest.mark.trio

ROOT = Path(__file__).resolve().parents[2]
CIRCUITS = ROOT / "circuits" / "build"
POSEIDON = CIRCUITS / "poseidon_preimage"
STATS = CIRCUITS / "private_stats"
HELLO = ROOT / "examples" / "hello"
DOMAIN = Domain(31337, "0x" + "00" * 20)
REQ, PROV = Peer(1), Peer(11)
#: real time, not virtual: the prover runs in a thread on the real clock
LIMIT_S = 120

# a circom witness generator in shape (every export the protocol needs) whose
# first call never returns: the hostile circuit that loops
LOOPING_WASM = wasmtime.wat2wasm(
    """(module
      (memory (export "memory") 1)
      (func (export "getVersion") (result i32) (loop $spin (br $spin)) (i32.const 2))
      (func (export "getFieldNumLen32") (result i32) (i32.const 8))
      (func (export "getRawPrime"))
      (func (export "readSharedRWMemory") (param i32) (result i32) (i32.const 0))
      (func (export "writeSharedRWMemory") (param i32 i32))
      (func (export "init") (param i32))
      (func (export "getInputSignalSize") (param i32 i32) (result i32) (i32.const 0))
      (func (export "setInputSignal") (param i32 i32 i32))
      (func (export "getInputSize") (result i32) (i32.const 0))
      (func (export "getWitnessSize") (result i32) (i32.const 1))
      (func (export "getWitness") (param i32))
      (func (export "getMessageChar") (result i32) (i32.const 0)))"""
)


@pytest.fixture(scope="module")
def prover():
    """The fastest installed prover (the native one where zksnake is installed)."""
    return select_prover("auto")


def pack(dest: Path, inputs: object, *, circuit: Path = POSEIDON) -> tuple[str, Path]:
    """A zk bundle as the requester packs it (docs/jobspec.md): its CID and CAR."""
    bundle = dest / "bundle"
    (bundle / "in").mkdir(parents=True)
    shutil.copytree(circuit, bundle / "circuit")
    (bundle / "job.json").write_text(json.dumps({"executor": "zk-groth16", "name": "zk"}))
    (bundle / "in" / "input.json").write_text(json.dumps(inputs))
    car = dest / "bundle.car"
    return write_path_car(bundle, car).cid, car


class Payloads:
    """Stands in for PayloadClient on both sides: bundles are prepared CARs,
    results are copied out of the provider's private store."""

    def __init__(self, files: PrivateFiles, *, bundles=None, provider_files=None):
        self.files = files
        self.bundles: dict[str, Path] = bundles if bundles is not None else {}
        self.provider_files = provider_files

    async def fetch(self, peer, job_id, kind, root, dest, *, max_bytes=None):
        await trio.lowlevel.checkpoint()
        source = self.bundles[root] if kind == "bundle" else self.provider_files.result(root)
        await trio.to_thread.run_sync(shutil.copyfile, source, dest)


def make_worker(tmp: Path, prover, peer: Peer = PROV, **zk_kw) -> WasmWorker:
    files = PrivateFiles(tmp / "private")
    cache = BundleCache(files.cache_root, max_bytes=1 << 30)
    sign = claim_signer(DOMAIN, peer.account_key)
    return WasmWorker(
        Payloads(files),
        tmp / "work",
        cache,
        zk=lambda limiter: ZkExecutor(sign, limiter, prover=prover, **zk_kw),
    )


def terms(circuit: Path = POSEIDON, *, job_id: str = "ab" * 32, **kw) -> SimpleNamespace:
    fields = dict(
        job_id=job_id,
        requester_account=REQ.record.account,
        provider_account=PROV.record.account,
        circuit_id=vk_id(load_circuit(circuit).vk),
        memory_mb=2048,
        max_seconds=60,
        max_fuel=0,
    )
    return SimpleNamespace(terms=SimpleNamespace(**{**fields, **kw}))


async def run_job(worker: WasmWorker, tmp: Path, inputs, agreement, *, circuit=POSEIDON):
    """fetch, execute, store, as the provider service does; the outcome and the result dir."""
    spec_cid, car = pack(tmp / agreement.terms.job_id[:8], inputs, circuit=circuit)
    worker.payloads.bundles[spec_cid] = car
    job_id = agreement.terms.job_id
    await worker.fetch_payload(job_id, REQ.peer_id, spec_cid)
    outcome = await worker.execute(job_id, agreement)
    cid = await worker.store_output(job_id)
    out = tmp / f"result-{job_id[:8]}"
    limits = ExportLimits.for_tree(max_bytes=1 << 30, max_entries=1000, max_depth=8)
    export_car(worker.payloads.files.result(cid), cid, out, limits=limits)
    return outcome, out


def check_proof(result: Path, agreement, circuit: Path = POSEIDON) -> tuple[int, ...]:
    """The result verifies against the circuit's own key and binds this job."""
    t = agreement.terms
    vk = load_circuit(circuit).vk
    proof = parse_proof(load_json_file(result / "proof.json"))
    public = parse_public(load_json_file(result / "public.json"))
    assert verify(vk, proof, public).valid
    assert public[-1] == job_binding(t.job_id, t.requester_account, t.provider_account)
    claim = json.loads((result / "zk_result.json").read_text())
    signer = recover_zk_result_signer(
        DOMAIN,
        t.job_id,
        t.requester_account,
        t.provider_account,
        claim["circuit_id"],
        proof_calldata(proof),
        public,
        bytes.fromhex(claim["signature"][2:]),
    )
    assert signer == t.provider_account
    return public


# --- through the market --------------------------------------------------------------


class LateOutputs:
    """The requester's Outputs, set once its store exists."""

    inner: StorageOutputs | None = None

    async def fetch_and_verify(self, peer_id, output_cid, verify_mode):
        return await self.inner.fetch_and_verify(peer_id, output_cid, verify_mode)

    async def fetch_logs(self, job_id, peer_id, output_cid):
        await self.inner.fetch_logs(job_id, peer_id, output_cid)


async def add_zk_provider(market: Market, prover) -> tuple[ProviderService, WasmWorker]:
    worker = make_worker(market.root / "provider", prover)
    core = ProviderCore(
        ProviderConfig(
            peer_id=PROV.peer_id,
            identity=PROV.record,
            cpu=4,
            memory_mb=64 * 1024,
            prices=PRICES,
            executors=frozenset({"wasm", "zk-groth16"}),
        ),
        AccountKeys(PROV.account_key),
    )
    service = ProviderService(
        core,
        store=InlineStore(JobStore(market.root / "provider.db")),
        transport=market.streams.endpoint(PROV.peer_id),
        worker=worker,
        clock=trio.current_time,
    )
    market.streams.register(PROV.peer_id, service.deliver)
    market.bus.subscribe(PROV.peer_id, BIDS_TOPIC, service.deliver_bid)
    await market.nursery.start(service.run)
    return service, worker


def zk_spec(tmp: Path, preimage: list[int]) -> JobSpec:
    circuit = load_circuit(POSEIDON)
    given = tmp / "input.json"
    given.write_text(json.dumps({"preimage": preimage}))
    return JobSpec(
        name="preimage",
        executor="zk-groth16",
        circuit=ContentRef("path", str(POSEIDON)),
        inputs=(ContentRef("path", str(given)),),
        price=Price(max_total=10**6, deadline_seconds=300),
        resources=Resources(cpu=1, memory_mb=2048, max_seconds=60),
        verify=Verify(mode="zk"),
        zk=ZkCircuit(
            name=circuit.name,
            cid=circuit_cid(POSEIDON),
            circuit_id=vk_id(circuit.vk),
            vk=load_json_file(POSEIDON / "verification_key.json"),
            public_names=circuit.public_names,
            n_outputs=circuit.n_outputs,
            public_inputs={},
        ),
    )


async def test_a_zk_job_is_proved_here_and_checked_by_the_requester(tmp_path, prover):
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            market = Market(nursery, tmp_path, outputs=LateOutputs())
            _, worker = await add_zk_provider(market, prover)
            req = await market.add_requester(1)
            files = PrivateFiles(tmp_path / "requester")
            market.outputs.inner = StorageOutputs(
                Payloads(files, provider_files=worker.payloads.files), InlineStore(req.store)
            )
            spec_cid, car = pack(tmp_path / "packed", {"preimage": [3, 4]})
            worker.payloads.bundles[spec_cid] = car
            job_id = await req.service.submit(zk_spec(tmp_path, [3, 4]), spec_cid)
            assert await market.wait_state(job_id, JobState.COMPLETED, JobState.FAILED) is (
                JobState.COMPLETED
            ), req.store.get(job_id, role="requester")
            row = req.store.get(job_id, role="requester")
            [attempt] = row.verification["attempts"]
            assert attempt["valid"], attempt
            nursery.cancel_scope.cancel()
    # what `mask result ID -o DIR` writes: the requester's fetched CAR
    out = tmp_path / "result"
    limits = ExportLimits.for_tree(max_bytes=1 << 30, max_entries=1000, max_depth=8)
    export_car(files.result(row.output_cid), row.output_cid, out, limits=limits)
    agreement = SimpleNamespace(
        terms=SimpleNamespace(
            job_id=job_id,
            requester_account=REQ.record.account,
            provider_account=PROV.record.account,
        )
    )
    public = check_proof(out, agreement)
    assert public[0] == poseidon([3, 4])
    assert sorted(p.name for p in out.iterdir()) == [
        "out",
        "proof.json",
        "public.json",
        "stderr.log",
        "stdout.log",
        "verification_key.json",
        "zk_result.json",
    ]
    assert json.loads((out / "out" / "outputs.json").read_text()) == {
        "hash": str(poseidon([3, 4])),
        "binding": str(public[-1]),
    }
    claim = json.loads((out / "zk_result.json").read_text())
    assert claim["prover"] == prover.name and claim["constraints"] == 241
    assert f"prover {prover.name}" in (out / "stdout.log").read_text()
    assert (out / "verification_key.json").read_bytes() == (
        POSEIDON / "verification_key.json"
    ).read_bytes()
    usage = row.usage
    assert usage["fuel"] == 241 and usage["wall_ms"] > 0


# --- the worker, hostile cases -----------------------------------------------------------


async def test_every_way_a_zk_run_fails_is_typed_and_the_next_job_proves(tmp_path, prover):
    worker = make_worker(tmp_path, prover)
    stats = terms(STATS)
    over = [2**32] + [1] * 15  # a value out of the circuit's [0, 2^32) range
    cases = [
        ({"preimage": "one"}, terms(job_id="01" * 32), POSEIDON, "zk_input_invalid"),
        ({"preimage": [1, 2], "salt": 1}, terms(job_id="02" * 32), POSEIDON, "zk_unknown_input"),
        (
            {"preimage": [1, 2], "binding": 5},
            terms(job_id="03" * 32),
            POSEIDON,
            "zk_binding_supplied",
        ),
        ({"preimage": [1, 2, 3]}, terms(job_id="04" * 32), POSEIDON, "zk_input_invalid"),
        (
            # committed correctly: only the range check fails
            {"values": over, "threshold": 1, "commitment": poseidon(over)},
            SimpleNamespace(terms=SimpleNamespace(**{**vars(stats.terms), "job_id": "05" * 32})),
            STATS,
            "zk_constraint_failed",
        ),
        (
            {"preimage": [1, 2]},
            terms(job_id="06" * 32, circuit_id="00" * 32),
            POSEIDON,
            "zk_circuit_mismatch",
        ),
    ]
    for inputs, agreement, circuit, code in cases:
        outcome, out = await run_job(worker, tmp_path, inputs, agreement, circuit=circuit)
        assert outcome.error_code == code, (code, outcome)
        assert outcome.exit_code is None
        assert code in (out / "stderr.log").read_text()  # the reason, for mask job --logs
        assert not (out / "proof.json").exists() and list((out / "out").iterdir()) == []
    # the provider is fine: the next job is proved
    good = terms(job_id="07" * 32)
    outcome, out = await run_job(worker, tmp_path, {"preimage": [1, 2]}, good)
    assert (outcome.error_code, outcome.exit_code) == ("", 0)
    assert check_proof(out, good)[0] == poseidon([1, 2])


# --- the node: zk-groth16 offered only once a prover works -----------------------------


def node_config(root: Path, executors: list[str], zk_prover: str = "auto"):
    return load_config(
        env={},
        overrides={
            "node": {"data_dir": str(root)},
            "p2p": {"listen": ["/ip4/127.0.0.1/tcp/0"], "dht": False},
            "chain": {"backend": "off"},
            # no republishing by the clock within a test: a change must publish by itself
            "offers": {
                "executors": executors,
                "cpu": 1,
                "memory_mb": 1024,
                "disk_mb": 1000,
                "ttl_s": 3600.0,
                "republish_interval_s": 1200.0,
                "capacity_check_interval_s": 1200.0,
            },
            "worker": {"zk_prover": zk_prover},
        },
    )


async def run_node(root: Path, cfg, until) -> Node:
    """Start a real node in this process, wait for ``until(node)``, stop it."""
    ident = load_or_create(root, passphrase="x", scrypt_n=1 << 14, now=1_700_000_000)
    node = Node(cfg, ident)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            assert "zk-groth16" not in node.jobs.executors()  # not before the check
            while not until(node):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    return node


async def test_a_node_offers_zk_groth16_once_its_prover_passed(tmp_path, prover):
    root = tmp_path / "n"
    node = await run_node(
        root,
        node_config(root, ["wasm", "zk-groth16"]),
        lambda n: n._my_offer is not None and "zk-groth16" in n._my_offer.executors,
    )
    assert node._my_offer.executors == ("wasm", "zk-groth16")  # republished at once
    assert node.jobs.provider.core.config.executors == {"wasm", "zk-groth16"}
    assert node.node_info()["zk_prover"].startswith(f"{prover.name} (self-check ")


async def test_a_node_without_a_working_prover_says_why_and_offers_no_zk(tmp_path, caplog):
    root = tmp_path / "n"
    node = await run_node(
        root,
        node_config(root, ["zk-groth16"], zk_prover="nonexistent"),
        lambda n: n.jobs.zk.status.state is not ProverState.CHECKING,
    )
    status = node.node_info()["zk_prover"]
    assert status.startswith("unavailable: worker.zk_prover = 'nonexistent'"), status
    assert "zk-groth16 is not offered" in status
    assert "known provers" in status  # the hint: which names exist
    assert node.jobs.executors() == () and node._my_offer is None  # nothing to sell
    assert "zk-groth16 is not offered" in caplog.text


# --- the worker, runs that never end, crash or are cancelled ------------------------------


def looping_circuit(tmp: Path) -> Path:
    """poseidon_preimage with a witness generator that never returns."""
    circuit = tmp / "looping"
    shutil.copytree(POSEIDON, circuit)
    (circuit / "circuit.wasm").write_bytes(LOOPING_WASM)
    return circuit


async def test_a_circuit_whose_wasm_loops_stops_at_the_jobs_limit(tmp_path, prover):
    worker = make_worker(tmp_path, prover)
    circuit = looping_circuit(tmp_path)
    agreement = terms(circuit, max_seconds=1)
    start = trio.current_time()
    outcome, out = await run_job(worker, tmp_path, {"preimage": [1, 2]}, agreement, circuit=circuit)
    assert outcome.error_code == "timeout", outcome
    assert trio.current_time() - start < 10  # stopped by the prover's deadline, not the grace
    assert "timeout" in (out / "stderr.log").read_text()
    assert worker.limiter.borrowed_tokens == 0  # its slot is free again


class StuckProver:
    """A prover that ignores its deadline until told to go on, or crashes."""

    name = "stuck"

    def __init__(self, *, crash: BaseException | None = None):
        self.crash = crash
        self.started = threading.Event()
        self.release = threading.Event()
        self.cancel: threading.Event | None = None

    def prove(self, circuit, inputs, *, deadline_s, cancel=None):
        self.cancel = cancel
        self.started.set()
        if self.crash is not None:
            raise self.crash
        self.release.wait(30)
        raise RuntimeError("released")


async def test_a_prover_that_overruns_is_abandoned_and_the_job_times_out(tmp_path):
    prover = StuckProver()
    worker = make_worker(tmp_path, prover, overrun_grace_s=0.2)
    try:
        agreement = terms(max_seconds=1)
        outcome, out = await run_job(worker, tmp_path, {"preimage": [1, 2]}, agreement)
        assert outcome.error_code == "timeout", outcome
        assert "wall-clock limit of 1 s" in outcome.error_message
        assert prover.cancel is not None and prover.cancel.is_set()  # told to stop
        assert worker.limiter.borrowed_tokens == 1  # the stuck thread keeps its slot
    finally:
        prover.release.set()
    with trio.fail_after(10):
        while worker.limiter.borrowed_tokens:  # ... until it really ends
            await trio.sleep(0.01)
    assert not (out / "proof.json").exists()


async def test_a_prover_that_crashes_fails_the_job_not_the_provider(tmp_path):
    prover = StuckProver(crash=MemoryError("std::bad_alloc"))
    worker = make_worker(tmp_path, prover)
    outcome, out = await run_job(worker, tmp_path, {"preimage": [1, 2]}, terms())
    assert outcome.error_code == "zk_prover_failed", outcome
    assert "MemoryError: std::bad_alloc" in outcome.error_message
    assert "zk_prover_failed" in (out / "stderr.log").read_text()


async def test_an_aborted_job_cancels_its_prover(tmp_path):
    prover = StuckProver()
    worker = make_worker(tmp_path, prover)
    spec_cid, car = pack(tmp_path / "p", {"preimage": [1, 2]})
    worker.payloads.bundles[spec_cid] = car
    agreement = terms()
    await worker.fetch_payload("ab" * 32, REQ.peer_id, spec_cid)
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.execute, "ab" * 32, agreement)
            await trio.to_thread.run_sync(prover.started.wait)
            nursery.cancel_scope.cancel()  # what AbortExecution does
    assert not scope.cancelled_caught
    assert prover.cancel.is_set()
    prover.release.set()


async def test_zk_bundles_need_a_prover_and_wasm_bundles_still_run(tmp_path, prover):
    # a worker built without zk (zk-groth16 not in offers.executors)
    files = PrivateFiles(tmp_path / "plain")
    plain = WasmWorker(
        Payloads(files), tmp_path / "plain-work", BundleCache(files.cache_root, max_bytes=1 << 30)
    )
    outcome, _ = await run_job(plain, tmp_path / "a", {"preimage": [1, 2]}, terms())
    assert outcome.error_code == "executor_unsupported", outcome
    # one whose start check found no prover
    outcome, out = await run_job(
        make_worker(tmp_path / "b", None), tmp_path / "b", {"preimage": [1, 2]}, terms()
    )
    assert outcome.error_code == "executor_unsupported", outcome
    assert "no working Groth16 prover" in (out / "stderr.log").read_text()
    # a wasm job on a zk-enabled worker runs as before
    worker = make_worker(tmp_path / "c", prover)
    bundle = tmp_path / "hello"
    (bundle / "in").mkdir(parents=True)
    shutil.copytree(HELLO / "data", bundle / "in" / "data")
    shutil.copyfile(HELLO / "hello.wasm", bundle / "program.wasm")
    (bundle / "job.json").write_text(json.dumps({"executor": "wasm", "args": ["10"]}))
    spec_cid = write_path_car(bundle, tmp_path / "hello.car").cid
    worker.payloads.bundles[spec_cid] = tmp_path / "hello.car"
    await worker.fetch_payload("cd" * 32, REQ.peer_id, spec_cid)
    wasm_terms = SimpleNamespace(terms=SimpleNamespace(memory_mb=64, max_fuel=0, max_seconds=30))
    outcome = await worker.execute("cd" * 32, wasm_terms)
    assert (outcome.exit_code, outcome.error_code) == (0, "")
