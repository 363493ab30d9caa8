"""Relayed zk jobs (a DApp's request on ComputeRequests, placed by a gateway):
the relay section is checked as hostile input; the provider binds the proof to
jobIdOf(request), the contract and itself, and signs a claim naming the same;
the requester checks that binding; nobody signs or expects a voucher; the
provider's record says which request pays."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from ledger.agreement import AccountKeys
from ledger.vouchers import Domain
from ledger.zkclaims import recover_zk_result_signer, request_job_id
from maskd.jobs_rpc import provider_explanation
from maskd.relay_check import inputs_hash, relay_problem
from maskd.zk_bundle import job_document
from maskd.zk_worker import claim_signer
from protocol.errors import JobError
from protocol.market import UsageReport
from scheduler.jobstate import JobState
from scheduler.policy import UnitPrices
from scheduler.provider import (
    ExecutionOutcome,
    ExpectPayment,
    Funds,
    ProviderConfig,
    ProviderCore,
    SendProviderAgreement,
    SendQuote,
    SendResult,
)
from scheduler.requester import (
    FetchOutput,
    RequesterConfig,
    RequesterCore,
    SendAgreement,
    SendPayment,
)
from scheduler.spec import (
    ContentRef,
    JobSpec,
    Price,
    Relay,
    Resources,
    Verify,
    ZkCircuit,
    parse_relay,
    relay_job_id,
)
from scheduler.store import JobRow, RecordTransition
from tests.factories import Peer
from worker.zk import ZkBundle, ZkCode, claim_json, load_zk_bundle, prove_job, read_relay
from zkp.binding import job_binding
from zkp.circuit import load_circuit, shipped_circuits
from zkp.formats import proof_calldata, vk_id
from zkp.testing import TrapdoorSetup

R, P1 = Peer(1), Peer(11)
T0 = 1000.0
ESCROW = "0x" + "ab" * 20
DOMAIN = Domain(31337, ESCROW)
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
RELAY = {"chain_id": 31337, "contract": CONTRACT, "request_id": "7"}
STATS = shipped_circuits()["private_stats"]
SETUP = TrapdoorSetup.new(6, seed=8)  # private_stats' layout: 3 outputs, 2 inputs, binding


# --- the relay section ----------------------------------------------------------------


def test_the_relay_job_id_is_compute_requests_job_id_of():
    for chain_id, request_id in ((31337, 1), (1, 2**256 - 1), (2**63, 12345)):
        assert relay_job_id(chain_id, CONTRACT, request_id) == (
            request_job_id(chain_id, CONTRACT, request_id).hex()
        )
    relay = parse_relay(RELAY)
    assert relay.job_id == request_job_id(31337, CONTRACT, 7).hex()
    assert relay.binding_parties(P1.record.account) == (relay.job_id, CONTRACT, P1.record.account)


def test_a_relay_is_checked_and_normalised():
    relay = parse_relay({**RELAY, "contract": CONTRACT.lower(), "request_id": "007"})
    assert relay == Relay(chain_id=31337, contract=CONTRACT, request_id="7")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0x1234", "a table"),
        ([1, 2], "a table"),
        ({**RELAY, "extra": 1}, "unknown keys: extra"),
        ({**RELAY, "chain_id": 0}, "relay.chain_id"),
        ({**RELAY, "chain_id": True}, "relay.chain_id"),
        ({**RELAY, "chain_id": "31337"}, "relay.chain_id"),
        ({**RELAY, "chain_id": 2**64}, "relay.chain_id"),
        ({**RELAY, "contract": "0x1234"}, "relay.contract"),
        ({**RELAY, "contract": None}, "relay.contract"),
        ({**RELAY, "contract": "0x" + "g" * 40}, "relay.contract"),
        ({**RELAY, "request_id": 7}, "decimal string"),
        ({**RELAY, "request_id": "-7"}, "decimal string"),
        ({**RELAY, "request_id": "0x07"}, "decimal string"),
        ({**RELAY, "request_id": "1" * 79}, "decimal string"),
        ({**RELAY, "request_id": "0"}, "above 0"),
        ({**RELAY, "request_id": str(2**256)}, "uint256"),
        ({"chain_id": 31337, "contract": CONTRACT}, "relay.request_id"),
    ],
)
def test_a_malformed_relay_is_refused_with_its_field(value, words):
    with pytest.raises(ValueError) as bad:
        parse_relay(value)
    assert words in str(bad.value)
    with pytest.raises(JobError) as refused:  # the provider's reading of job.json
        read_relay({"executor": "zk-groth16", "relay": value})
    assert refused.value.code == ZkCode.BAD_BUNDLE.value and words in refused.value.message
    assert refused.value.hint


def relayed_spec(relay: Relay | None = None) -> JobSpec:
    return JobSpec(
        name="dapp-request-7",
        executor="zk-groth16",
        circuit=ContentRef("path", str(STATS)),
        inputs=(ContentRef("path", "/tmp/input.json"),),
        price=Price(max_total=5 * 10**18, deadline_seconds=600),
        resources=Resources(cpu=1, memory_mb=2048, max_seconds=120),
        verify=Verify(mode="zk"),
        zk=ZkCircuit(
            name="private_stats",
            cid="bafybeicircuit",
            circuit_id="c1" * 32,
            vk={"protocol": "groth16"},
            public_names=("sum", "count_above", "mean_floor", "threshold", "commitment", "binding"),
            n_outputs=3,
            public_inputs={"threshold": "5000", "commitment": "99"},
        ),
        relay=relay or parse_relay(RELAY),
    )


def test_the_relay_travels_in_job_json_and_survives_the_job_store():
    spec = relayed_spec()
    doc = job_document(spec)
    assert doc["relay"] == RELAY and doc["circuit_id"] == "c1" * 32 and "zk" not in doc
    assert read_relay(json.loads(json.dumps(doc))) == spec.relay
    stored = json.loads(json.dumps(msgspec.to_builtins(spec)))  # as the job row keeps it
    assert msgspec.convert(stored, JobSpec) == spec
    assert read_relay({"executor": "zk-groth16"}) is None


# --- the provider: binding, claim, bundle ---------------------------------------------


class TrapdoorProver:
    """Proves private_stats' layout for the trapdoor key, with the binding it is given."""

    name = "trapdoor"

    def prove(self, circuit, inputs, *, deadline_s, cancel=None):
        public = (89085, 8, 5567, 5000, 99, int(inputs["binding"]))
        return SETUP.prove(public), public


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def trapdoor_bundle(relay: Relay | None) -> ZkBundle:
    circuit = dataclasses.replace(load_circuit(STATS), vk=SETUP.vk)
    inputs = {"values": ["1"] * 16, "threshold": "5000", "commitment": "99"}
    return ZkBundle({"executor": "zk-groth16"}, circuit, inputs, 0, relay)


def terms(**kw) -> SimpleNamespace:
    base = dict(
        job_id="ab" * 32,
        requester_account=R.record.account,
        provider_account=P1.record.account,
        circuit_id=vk_id(SETUP.vk),
        chain_id=31337,
        memory_mb=2048,
        max_seconds=60,
    )
    return SimpleNamespace(**{**base, **kw})


def test_a_relayed_proof_is_bound_and_claimed_as_fulfill_checks_it():
    relay = parse_relay(RELAY)
    t = terms()
    proved = prove_job(trapdoor_bundle(relay), t, TrapdoorProver(), deadline_s=5, clock=Ticks())
    binding = job_binding(relay.job_id, CONTRACT, P1.record.account)
    assert proved.public[-1] == binding
    assert binding != job_binding(t.job_id, t.requester_account, t.provider_account)
    assert (proved.job_id, proved.requester, proved.relay) == (relay.job_id, CONTRACT, relay)
    # the claim (slashing evidence) names what the binding names, or an honest
    # provider's relayed proof would look "bound to another job" and be slashable
    signature = claim_signer(DOMAIN, P1.account_key)(t, proved)
    claim = claim_json(proved, t, signature)
    assert (claim["job_id"], claim["requester"], claim["provider"]) == (
        relay.job_id,
        CONTRACT,
        P1.record.account,
    )
    assert claim["relay"] == RELAY
    signer = recover_zk_result_signer(
        DOMAIN,
        relay.job_id,
        CONTRACT,
        P1.record.account,
        proved.circuit_id,
        proof_calldata(proved.proof),
        proved.public,
        signature,
    )
    assert signer == P1.record.account


def test_an_ordinary_proof_keeps_the_agreements_binding_and_claim():
    t = terms()
    proved = prove_job(trapdoor_bundle(None), t, TrapdoorProver(), deadline_s=5, clock=Ticks())
    assert proved.public[-1] == job_binding(t.job_id, t.requester_account, t.provider_account)
    claim = claim_json(proved, t, b"\1" * 65)
    assert (claim["job_id"], claim["requester"]) == (t.job_id, t.requester_account)
    assert "relay" not in claim


def test_a_relay_on_another_chain_than_the_agreement_is_refused():
    relay = parse_relay({**RELAY, "chain_id": 1})
    prover = TrapdoorProver()
    with pytest.raises(JobError) as refused:
        prove_job(trapdoor_bundle(relay), terms(), prover, deadline_s=5, clock=Ticks())
    assert refused.value.code == ZkCode.BAD_BUNDLE.value
    assert "chain 1" in refused.value.message and "chain 31337" in refused.value.message


def test_the_provider_reads_the_relay_out_of_the_bundle(tmp_path: Path):
    bundle = tmp_path / "bundle"
    shutil.copytree(STATS, bundle / "circuit")
    (bundle / "in").mkdir()
    inputs = {"values": ["1"] * 16, "threshold": "5000", "commitment": "99"}
    (bundle / "in" / "input.json").write_text(json.dumps(inputs))
    (bundle / "job.json").write_text(json.dumps({"executor": "zk-groth16", "relay": RELAY}))
    assert load_zk_bundle(bundle, memory_bytes=2 << 30).relay == parse_relay(RELAY)
    (bundle / "job.json").write_text(
        json.dumps({"executor": "zk-groth16", "relay": {**RELAY, "contract": "nope"}})
    )
    with pytest.raises(JobError) as refused:
        load_zk_bundle(bundle, memory_bytes=2 << 30)
    assert refused.value.code == ZkCode.BAD_BUNDLE.value and "relay.contract" in str(
        refused.value.message
    )


# --- the market cores: nobody signs or expects a voucher ------------------------------


def only(cmds, kind):
    found = [c for c in cmds if isinstance(c, kind)]
    assert len(found) == 1, cmds
    return found[0]


def cores() -> tuple[RequesterCore, ProviderCore]:
    requester = RequesterCore(
        RequesterConfig(peer_id=R.peer_id, identity=R.record, verifying_contract=ESCROW),
        AccountKeys(R.account_key, DOMAIN),
    )
    provider = ProviderCore(
        ProviderConfig(
            peer_id=P1.peer_id,
            identity=P1.record,
            cpu=4,
            memory_mb=8192,
            prices=UnitPrices(cpu_core_hour=3600, memory_gb_hour=0),
            verifying_contract=ESCROW,
            executors=frozenset({"zk-groth16"}),
            paid=True,
        ),
        AccountKeys(P1.account_key, DOMAIN),
        funds=lambda account: Funds(available=10**24, owes=0),
    )
    return requester, provider


def deliver(spec: JobSpec, relay: Relay | None):
    """Submit, quote, agree, prove and deliver one zk job; verify it."""
    core, prov = cores()
    job_id, cmds = core.submit(spec, "bafkreispec", T0)
    q = only(prov.handle_bid(cmds[-1].bid, T0), SendQuote).message
    core.handle_message(P1.peer_id, q, T0)
    offer = only(core.handle_timer(T0 + 0.5), SendAgreement).message
    signed = only(prov.handle_message(R.peer_id, offer, T0 + 0.5), SendProviderAgreement)
    core.handle_message(P1.peer_id, signed.message, T0 + 0.6)
    outcome = ExecutionOutcome(
        exit_code=0,
        usage=UsageReport(wall_ms=5),
        stdout_sha256=b"\0" * 32,
        stderr_sha256=b"\0" * 32,
        relay=relay,
    )
    prov.execution_finished(job_id, outcome, T0 + 1)
    delivered = prov.output_stored(job_id, "bafyout", T0 + 1)
    result = only(delivered, SendResult).message
    only(core.handle_message(P1.peer_id, result, T0 + 1.1), FetchOutput)
    verified = core.output_verified(job_id, True, "", T0 + 1.2)
    return core, job_id, delivered, verified


def test_a_relayed_job_is_completed_with_nothing_owed_and_no_voucher():
    relay = parse_relay(RELAY)
    core, job_id, delivered, verified = deliver(relayed_spec(relay), relay)
    # the bid offers the request's payment, like any bid its max_total
    done = [c for c in verified if isinstance(c, RecordTransition)]
    assert [c.event.value for c in done] == ["verified"] and done[0].owed is None
    assert not [c for c in verified if isinstance(c, SendPayment)]
    assert core.channels == {} and core.counters["vouchers_signed"] == 0
    # the provider expects no voucher (so never flags the gateway voucher_missing)
    # and records which request pays it
    assert not [c for c in delivered if isinstance(c, ExpectPayment)]
    [finished] = [c for c in delivered if isinstance(c, RecordTransition)][-1:]
    assert finished.fields["explanation"] == {
        "paid_by": {
            "kind": "compute_request",
            "chain_id": 31337,
            "contract": CONTRACT,
            "request_id": "7",
        }
    }
    row = JobRow(
        job_id, "provider", JobState.COMPLETED, {}, None, None, None, None, None, None, None,
        finished.fields["explanation"], T0, T0,
    )  # fmt: skip
    explained = provider_explanation(row, None)
    assert explained["payment"]["state"] == "by_request"
    assert "request 7" in explained["text"] and CONTRACT in explained["text"]


def test_an_ordinary_zk_job_is_still_owed_and_paid_by_voucher():
    spec = msgspec.structs.replace(relayed_spec(), relay=None)
    core, _, delivered, verified = deliver(spec, None)
    assert only(verified, SendPayment) and only(delivered, ExpectPayment)
    assert sum(core.channels.values()) > 0


# --- the provider's check of the request on chain (maskd.relay_check) ------------------


def request_state(**change):
    from ledger.zkchain import RequestState

    base = dict(
        requester=CONTRACT,
        deadline=2000,
        n_outputs=3,
        n_inputs=2,
        status="open",
        callback=CONTRACT,
        payment=10**18,
        circuit_id="c1" * 32,
        inputs_hash=inputs_hash([5000, 99]),
    )
    return RequestState(**{**base, **change})


def problem(state=None, *, relay=None, known=CONTRACT, **change):
    args = dict(
        known_contract=known,
        chain_id=31337,
        circuit_id="0x" + "c1" * 32,
        price=10**18,
        public_inputs=[5000, 99],
        chain_now=1000,
    )
    return relay_problem(
        relay or parse_relay(RELAY), state or request_state(), **{**args, **change}
    )


def test_a_real_open_paying_request_for_these_inputs_passes():
    assert problem() is None
    assert inputs_hash([1]) == "b10e2d527612073b26eecdfd717e6a320cf44b4afac2b0732d9fcbe2b7fa0cf6"


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"known": None}, "knows no ComputeRequests"),
        ({"known": "0x" + "99" * 20}, "knows ComputeRequests 0x9999"),
        ({"chain_id": 1}, "on chain 1"),
        ({"state": request_state(status="fulfilled")}, "request 7 is fulfilled, not open"),
        ({"state": request_state(status="none")}, "request 7 is none"),
        ({"state": request_state(deadline=1000)}, "past its deadline"),
        ({"state": request_state(circuit_id="77" * 32)}, "names circuit 7777"),
        ({"price": 10**18 + 1}, "below the agreed price"),
        ({"public_inputs": [5001, 99]}, "public inputs are not request 7's"),
        ({"public_inputs": [5000]}, "public inputs are not"),
    ],
)
def test_a_relay_that_would_not_pay_this_proof_is_refused_with_the_reason(kw, words):
    why = problem(**kw)
    assert why is not None and words in why
