"""The requester's zk check (``StorageOutputs`` with verify mode zk) on real files.

A real JobStore, real result CARs built from real directories, real Groth16
proofs (``zkp.testing.TrapdoorSetup``: valid proofs for any public inputs
under its key) checked by the native backend. Only the payload transfer is a
fake that hands over a prepared CAR. Each way a provider can get it wrong is
refused with its reason, recorded in the job row, and nothing raises.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
import trio
import trio.testing

from maskd.jobfiles import PrivateFiles
from maskd.payloads import StorageOutputs
from maskd.zk_check import MAX_PROOF_BYTES
from protocol.errors import JobError
from protocol.market import Agreement, AgreementTerms, encode_market
from scheduler.async_store import ThreadedStore
from scheduler.jobstate import JobEvent, JobState
from scheduler.reputation import Evidence, EvidenceKind
from scheduler.spec import ContentRef, JobSpec, Price, Resources, Verify, ZkCircuit
from scheduler.store import JobStore
from scheduler.testing import FakeOutputs
from storage.carfile import write_path_car
from tests.component.harness import Market
from tests.factories import Peer
from zkp.binding import SNARK_SCALAR_FIELD, job_binding
from zkp.formats import proof_to_json, public_to_json, vk_to_json
from zkp.testing import TrapdoorSetup

pytestmark = pytest.mark.trio


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


R, P1, P2 = Peer(1), Peer(11), Peer(12)
JOB, OTHER_JOB = "ab" * 32, "cd" * 32
NAMES = ("sum", "count_above", "threshold", "commitment", "binding")
GIVEN = {"threshold": "7", "commitment": "123456789"}
SETUP = TrapdoorSetup.new(len(NAMES), seed=3)
WRONG_SETUP = TrapdoorSetup.new(len(NAMES), seed=4)
ZK = ZkCircuit(
    name="private_stats",
    cid="bafybeicircuit",
    circuit_id="11" * 32,
    vk=vk_to_json(SETUP.vk),
    public_names=NAMES,
    n_outputs=2,
    public_inputs=GIVEN,
)


def public_for(*, job=JOB, provider=P1, sum_=100, threshold=7, commitment=123456789):
    binding = job_binding(job, R.record.account, provider.record.account)
    return [sum_, 3, threshold, commitment, binding]


class FakePayloads:
    """Stands in for PayloadClient: 'fetches' a prepared CAR by its root."""

    def __init__(self, files: PrivateFiles):
        self.files = files
        self.cars: dict[str, Path] = {}
        self.fetches = 0

    async def fetch(self, peer, job_id, kind, root, dest, *, max_bytes=None):
        assert kind == "result"
        self.fetches += 1
        await trio.lowlevel.checkpoint()
        if root not in self.cars:
            raise JobError("the peer refused the payload: not_ready", code="payload_refused")
        shutil.copyfile(self.cars[root], dest)


@pytest.fixture
def node(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    files = PrivateFiles(tmp_path / "private")
    payloads = FakePayloads(files)
    outputs = StorageOutputs(payloads, ThreadedStore(store), clock=lambda: 5000.0)
    yield SimpleNamespace(tmp=tmp_path, store=store, payloads=payloads, outputs=outputs)
    store.close()


def result_car(node, name: str, files: dict[str, bytes | str]) -> str:
    """A provider's result root holding ``files``; returns its CID."""
    root = node.tmp / "results" / name
    (root / "out").mkdir(parents=True)
    (root / "out" / "outputs.json").write_text("{}")
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    car = node.tmp / "results" / f"{name}.car"
    cid = write_path_car(root, car).cid
    node.payloads.cars[cid] = car
    return cid


def proof_files(public, *, setup=SETUP) -> dict[str, str]:
    proof = setup.prove([x % SNARK_SCALAR_FIELD for x in public])
    return {
        "proof.json": json.dumps(proof_to_json(proof)),
        "public.json": json.dumps(public_to_json(public)),
        "verification_key.json": json.dumps(vk_to_json(setup.vk)),
    }


def verifying_job(node, output_cid: str, *, provider=P1, job_id=JOB) -> None:
    """A requester job in ``verifying``: agreed with ``provider``, its result in."""
    spec = JobSpec(
        name="stats",
        executor="zk-groth16",
        circuit=ContentRef("cid", ZK.cid),
        inputs=(ContentRef("cid", "bafkreiinput"),),
        price=Price(max_total=10**6),
        verify=Verify(mode="zk"),
        zk=ZK,
    )
    terms = AgreementTerms(
        job_id=job_id,
        requester_peer=R.peer_id,
        requester_account=R.record.account,
        provider_peer=provider.peer_id,
        provider_account=provider.record.account,
        price_total="60",
        cpu=1,
        memory_mb=2048,
        gpu=0,
        max_seconds=120,
        max_fuel=0,
        deadline=10_000,
        spec_cid="bafyspec",
        heartbeat_interval_ms=1000,
        chain_id=31337,
        verifying_contract="0x" + "00" * 20,
        circuit_id=ZK.circuit_id,
    )
    stored = {"spec": msgspec.to_builtins(spec), "spec_cid": "bafyspec", "deadline": 10_000}
    s = node.store
    s.create(job_id, role="requester", spec=stored, now=1.0)
    agreement = encode_market(Agreement(terms=terms, requester_signature=b""))
    s.transition(
        job_id,
        JobEvent.MATCHED,
        role="requester",
        now=2.0,
        provider_peer=provider.peer_id,
        provider_account=provider.record.account,
        agreement=agreement,
    )
    s.transition(job_id, JobEvent.STARTED, role="requester", now=3.0)
    s.transition(job_id, JobEvent.RESULT_RECEIVED, role="requester", now=4.0, output_cid=output_cid)


async def check(node, output_cid: str, provider=P1) -> tuple[bool, str]:
    with trio.fail_after(30):
        return await node.outputs.fetch_and_verify(provider.peer_id, output_cid, "zk")


def attempts(node, job_id=JOB) -> list[dict]:
    return node.store.get(job_id, role="requester").verification["attempts"]


async def test_a_valid_proof_of_this_job_passes_and_its_verdict_is_recorded(node):
    public = public_for()
    cid = result_car(node, "good", proof_files(public))
    verifying_job(node, cid)
    assert await check(node, cid) == (True, "")
    row = node.store.get(JOB, role="requester")
    assert row.state is JobState.VERIFYING  # the core moves it; the check only records
    v = row.verification
    assert v["mode"] == "zk"
    assert v["circuit"] == {"name": "private_stats", "cid": ZK.cid, "id": ZK.circuit_id}
    (a,) = v["attempts"]
    assert a["valid"] is True and a["reason"] == ""
    assert a["backend"] == "native" and 0 < a["ms"] < 1000
    assert a["public"] == dict(zip(NAMES, map(str, public), strict=True))
    assert (a["provider_peer"], a["provider_account"], a["output_cid"]) == (
        P1.peer_id,
        P1.record.account,
        cid,
    )
    # checked again (a restart): the proof is checked again, the verdict replaced, not added
    assert await check(node, cid) == (True, "")
    assert node.payloads.fetches == 1 and len(attempts(node)) == 1


def _tampered_proof(public) -> dict[str, str]:
    files = proof_files(public)
    proof = json.loads(files["proof.json"])
    proof["pi_c"] = json.loads(proof_files(public_for(sum_=1))["proof.json"])["pi_c"]
    files["proof.json"] = json.dumps(proof)
    return files


def _deep(n: int) -> str:
    return "[" * n + "]" * n


BAD = {
    # a proof of a different output than the one it claims
    "tampered_proof": (lambda: _tampered_proof(public_for()), "the proof does not verify"),
    # a claimed output changed after proving
    "tampered_public": (
        lambda: {
            **proof_files(public_for()),
            "public.json": json.dumps(public_to_json(public_for(sum_=101))),
        },
        "the proof does not verify",
    ),
    # valid, but under the provider's own key, not the circuit the requester sent
    "another_key": (
        lambda: proof_files(public_for(), setup=WRONG_SETUP),
        "the proof does not verify",
    ),
    "another_job": (lambda: proof_files(public_for(job=OTHER_JOB)), "bound to another job"),
    "another_provider": (lambda: proof_files(public_for(provider=P2)), "bound to another job"),
    "other_threshold": (
        lambda: proof_files(public_for(threshold=0)),
        "public input threshold is 0 in the proof, the job gave 7",
    ),
    "other_commitment": (
        lambda: proof_files(public_for(commitment=1)),
        "public input commitment is 1",
    ),
    "too_few_signals": (
        lambda: {
            **proof_files(public_for()),
            "public.json": json.dumps(public_to_json(public_for()[1:])),
        },
        "public.json has 4 signals, the circuit has 5",
    ),
    "no_proof": (
        lambda: {k: v for k, v in proof_files(public_for()).items() if k != "proof.json"},
        "the result has no proof.json",
    ),
    "no_public": (
        lambda: {k: v for k, v in proof_files(public_for()).items() if k != "public.json"},
        "the result has no public.json",
    ),
    "huge_proof": (
        lambda: {**proof_files(public_for()), "proof.json": " " * (MAX_PROOF_BYTES + 1)},
        f"proof.json is larger than {MAX_PROOF_BYTES} bytes",
    ),
    "deep_proof": (
        lambda: {**proof_files(public_for()), "proof.json": _deep(30_000)},
        "proof.json is nested too deeply",
    ),
    "deep_public": (
        lambda: {**proof_files(public_for()), "public.json": _deep(50_000)},
        "public.json is nested too deeply",
    ),
    "proof_not_json": (
        lambda: {**proof_files(public_for()), "proof.json": b"\xff\xfe{"},
        "proof.json is not JSON",
    ),
    "proof_a_directory": (
        lambda: {
            **{k: v for k, v in proof_files(public_for()).items() if k != "proof.json"},
            "proof.json/x": "{}",
        },
        "proof.json",
    ),
    "proof_wrong_shape": (
        lambda: {**proof_files(public_for()), "proof.json": json.dumps({"pi_a": [1, 2]})},
        "proof.json: ",
    ),
    "point_off_curve": (
        lambda: {
            **proof_files(public_for()),
            "proof.json": json.dumps(
                {**json.loads(proof_files(public_for())["proof.json"]), "pi_a": ["1", "3", "1"]}
            ),
        },
        "proof.json: ",
    ),
    "public_out_of_range": (
        lambda: {
            **proof_files(public_for()),
            "public.json": json.dumps([str(SNARK_SCALAR_FIELD)] * 5),
        },
        "public.json: ",
    ),
    "public_huge_number": (
        lambda: {**proof_files(public_for()), "public.json": "[" + "9" * 5000 + "]"},
        "public.json",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_a_bad_result_is_refused_with_its_reason_and_recorded(node, case):
    make, reason = BAD[case]
    cid = result_car(node, case, make())
    verifying_job(node, cid)
    ok, detail = await check(node, cid)
    assert not ok
    assert reason in detail, detail
    (a,) = attempts(node)
    assert a["valid"] is False and a["reason"] == detail
    assert a["provider_peer"] == P1.peer_id and a["output_cid"] == cid


async def test_a_result_that_cannot_be_fetched_is_a_recorded_failure(node):
    cid = result_car(node, "gone", proof_files(public_for()))
    del node.payloads.cars[cid]
    verifying_job(node, cid)
    ok, detail = await check(node, cid)
    assert not ok and "payload_refused" in detail
    assert attempts(node)[0]["reason"] == detail and attempts(node)[0]["backend"] is None


async def test_each_provider_s_verdict_is_kept_in_order(node):
    bad = result_car(node, "bad", proof_files(public_for(job=OTHER_JOB)))
    verifying_job(node, bad)
    assert not (await check(node, bad))[0]
    # the core replaced P1 and P2 delivered (the row as the core would leave it)
    s = node.store
    s.transition(JOB, JobEvent.PROVIDER_REPLACED, role="requester", now=6.0, output_cid=None)
    good = result_car(node, "good", proof_files(public_for(provider=P2)))
    terms = msgspec.msgpack.decode(s.get(JOB, role="requester").agreement, type=Agreement).terms
    agreement = Agreement(
        terms=msgspec.structs.replace(
            terms, provider_peer=P2.peer_id, provider_account=P2.record.account
        ),
        requester_signature=b"",
    )
    s.transition(
        JOB,
        JobEvent.MATCHED,
        role="requester",
        now=7.0,
        provider_peer=P2.peer_id,
        agreement=encode_market(agreement),
    )
    s.transition(JOB, JobEvent.STARTED, role="requester", now=8.0)
    s.transition(JOB, JobEvent.RESULT_RECEIVED, role="requester", now=9.0, output_cid=good)
    assert await check(node, good, provider=P2) == (True, "")
    assert [(a["provider_peer"], a["valid"]) for a in attempts(node)] == [
        (P1.peer_id, False),
        (P2.peer_id, True),
    ]


async def test_an_output_no_job_is_verifying_is_refused(node):
    cid = result_car(node, "stray", proof_files(public_for()))
    ok, detail = await check(node, cid)
    assert not ok and "no job is verifying" in detail
    assert node.payloads.fetches == 0


async def test_receipt_mode_is_unchanged(node):
    cid = result_car(node, "receipt", {"x.txt": "hello"})
    verifying_job(node, cid)
    with trio.fail_after(30):
        assert await node.outputs.fetch_and_verify(P1.peer_id, cid, "receipt") == (True, "")
    assert node.store.get(JOB, role="requester").verification is None


# --- in the market: a rejected proof sends the job elsewhere ------------------------------


class CheatedOutputs(FakeOutputs):
    """The requester's check, faked per provider: ``cheats`` fail it."""

    def __init__(self, cheats: set[str]):
        super().__init__()
        self.cheats = cheats
        self.modes: list[str] = []

    async def fetch_and_verify(self, peer_id, output_cid, verify_mode):
        self.modes.append(verify_mode)
        if peer_id in self.cheats:
            await trio.lowlevel.checkpoint()
            return False, f"the proof does not verify (from {peer_id[-4:]})"
        return await super().fetch_and_verify(peer_id, output_cid, verify_mode)


def zk_market_spec() -> JobSpec:
    return JobSpec(
        name="stats",
        executor="zk-groth16",
        circuit=ContentRef("cid", ZK.cid),
        inputs=(ContentRef("cid", "bafkreiinput"),),
        price=Price(max_total=10**6, deadline_seconds=600),
        resources=Resources(cpu=1, memory_mb=2048, max_seconds=60),
        verify=Verify(mode="zk"),
        zk=ZK,
    )


ZK_EXECUTORS = frozenset({"wasm", "zk-groth16"})


async def test_a_job_whose_proofs_fail_completes_with_an_honest_provider(autojump_clock, tmp_path):
    peers = {n: Peer(n) for n in (11, 12, 13)}
    cheats = {peers[11].peer_id, peers[12].peer_id}
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path, outputs=CheatedOutputs(cheats))
        for n in peers:
            await market.add_provider(n, executors=ZK_EXECUTORS)
        req = await market.add_requester()
        # the cheaters come first: they are the best reputed
        accounts = {n.peer_id: n.record.account for n in peers.values()}
        for peer in cheats:
            for i in range(10):
                req.service.core.book.add(
                    Evidence(accounts[peer], peer, f"old{i}", EvidenceKind.VERIFIED, 0.0)
                )
        job_id = await req.service.submit(zk_market_spec(), "bafkreispec")
        assert await market.wait_state(job_id, JobState.COMPLETED, JobState.FAILED) is (
            JobState.COMPLETED
        )
        row = req.store.get(job_id, role="requester")
        assert row.provider_peer == peers[13].peer_id
        log = req.store.transitions(job_id, role="requester")
        replaced = [t.fields.get("reason") for t in log if t.event is JobEvent.PROVIDER_REPLACED]
        assert replaced == ["verification_failed", "verification_failed"]
        assert [(e.provider_peer, e.job_id) for e in req.store.owed()] == [
            (peers[13].peer_id, job_id)
        ]
        assert set(market.outputs.modes) == {"zk"}
        core = req.service.core
        assert all(core.book.counts(accounts[p])["caught_wrong"] == 1 for p in cheats)
        explained = core.explain(job_id, trio.current_time())
        assert {f["provider_peer"] for f in explained["verification_failures"]} == cheats
        nursery.cancel_scope.cancel()


async def test_three_rejected_proofs_fail_the_job_and_nobody_is_paid(autojump_clock, tmp_path):
    peers = [Peer(n) for n in (11, 12, 13, 14)]
    async with trio.open_nursery() as nursery:
        market = Market(nursery, tmp_path, outputs=CheatedOutputs({p.peer_id for p in peers}))
        for p in peers:
            await market.add_provider(int(p.seed[0]), executors=ZK_EXECUTORS)
        req = await market.add_requester()
        job_id = await req.service.submit(zk_market_spec(), "bafkreispec")
        assert await market.wait_state(job_id, JobState.FAILED) is JobState.FAILED
        row = req.store.get(job_id, role="requester")
        assert row.error["code"] == "verification_failed"
        failures = row.error["verification_failures"]
        assert len(failures) == 3 and len({f["provider_peer"] for f in failures}) == 3
        assert all("the proof does not verify" in f["reason"] for f in failures)
        assert len(row.explanation["verification_failures"]) == 3
        assert req.store.owed() == []
        ran = sum(len(p.worker.finished) for p in market.providers)
        assert ran == 3  # the fourth provider was never asked
        nursery.cancel_scope.cancel()
