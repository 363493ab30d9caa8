"""ComputeRequests and the StatsConsumer example DApp on a real EVM: a DApp asks,
anyone fulfils with the provider's proof, the provider is paid and the DApp
called back; wrong inputs, wrong bindings, a front-runner naming itself, late
and double fulfilments are refused and move nothing; reverting, gas-burning and
return-bombing callbacks cannot block the payment, and a fulfiller cannot
starve the callback; refunds after the deadline; ledger.deploy puts the
contract beside the escrow; ledger.zkchain drives all of it under trio
(docs/ledger.md, "ComputeRequests").

Proofs come from zkp.testing.TrapdoorSetup with private_stats' public layout
(sum, count_above, mean_floor, threshold, commitment, binding); py-evm's
pairing takes ~1 s, so proof-carrying transactions set their gas.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from eth_account import Account

from ledger.chain import EmbeddedChain, RevertError
from ledger.contracts import ESCROW, REQUESTS, STATS_CONSUMER, load_artifact, refusal_reason
from ledger.deploy import deploy, fund
from ledger.zkchain import ZkChain, proof_gas
from ledger.zkclaims import fulfill_args, request_job_id
from tests.chainhelp import (
    GAS_BURNER,
    RETURN_BOMB,
    REVERTER,
    Chain,
    new_chain,
)
from zkp.binding import job_binding
from zkp.formats import load_json_file, parse_vk, proof_calldata, vk_calldata, vk_id
from zkp.testing import TrapdoorSetup

GAS = 1_500_000
MASK = 10**18
PAYMENT = 5 * MASK
COMMITMENT = 0x1234_5678_9ABC_DEF0 * 2**100 + 17
THRESHOLD = 5000
STATS = (89085, 8, 5567)  # sum, count_above, mean_floor
DATASET_CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
SHIPPED_STATS_VK = (
    Path(__file__).resolve().parents[2]
    / "circuits"
    / "build"
    / "private_stats"
    / "verification_key.json"
)

SETUP = TrapdoorSetup.new(6, seed=20)
CIRCUIT = bytes.fromhex(vk_id(SETUP.vk))


@pytest.fixture(scope="module")
def base():
    chain = new_chain(accounts=7)
    chain.register(SETUP.vk)
    dapp = chain.deploy(STATS_CONSUMER, chain.requests.address, CIRCUIT, COMMITMENT, DATASET_CID)
    chain.fund(chain.addr(1), 1000 * MASK)  # the DApp's user
    chain.send(chain.token.functions.approve(dapp.address, 1000 * MASK), chain.addr(1))
    chain.fund(chain.addr(5), 1000 * MASK)  # a contract-less requester (an EOA)
    chain.send(chain.token.functions.approve(chain.requests.address, 1000 * MASK), chain.addr(5))
    return chain, dapp


@pytest.fixture
def env(base):
    chain, dapp = base
    snap = chain.snapshot()
    yield chain, dapp
    chain.revert_to(snap)


def balance(chain: Chain, who: str) -> int:
    return chain.token.functions.balanceOf(who).call()


def ask(chain: Chain, dapp, threshold: int = THRESHOLD, deadline: int | None = None) -> int:
    deadline = chain.now() + 3600 if deadline is None else deadline
    receipt = chain.send(dapp.functions.ask(threshold, PAYMENT, deadline), chain.addr(1))
    (event,) = chain.events(receipt, "Requested", chain.requests)
    return event["requestId"]


def signals(chain: Chain, request_id: int, provider: str, **change) -> list[int]:
    """private_stats' public signals for a proof made for ``provider``."""
    job = chain.requests.functions.jobIdOf(request_id).call()
    values = {
        "outputs": list(STATS),
        "threshold": THRESHOLD,
        "commitment": COMMITMENT,
        "binding": job_binding(job, chain.requests.address, provider),
    } | change
    return [*values["outputs"], values["threshold"], values["commitment"], values["binding"]]


def proof_for(public: list[int]) -> list[int]:
    return proof_calldata(SETUP.prove(public))


def fulfill_call(chain: Chain, request_id: int, provider: str, proof, public):
    return chain.requests.functions.fulfill(*fulfill_args(request_id, provider, proof, public))


def money(chain: Chain, *who: str) -> tuple[int, ...]:
    return tuple(balance(chain, w) for w in (chain.requests.address, *who))


# ------------------------------------------------------------ the happy path


def test_a_dapp_request_is_fulfilled_paid_and_called_back(env):
    chain, dapp = env
    provider, gateway = chain.addr(2), chain.addr(3)
    before = balance(chain, provider)
    deadline = chain.now() + 3600
    receipt = chain.send(dapp.functions.ask(THRESHOLD, PAYMENT, deadline), chain.addr(1))
    (requested,) = chain.events(receipt, "Requested", chain.requests)
    request_id = requested["requestId"]
    assert request_id == 1
    assert requested == {
        "requestId": 1,
        "requester": dapp.address,
        "circuitId": CIRCUIT,
        "inputs": [THRESHOLD, COMMITMENT],
        "nOutputs": 3,
        "inputCid": DATASET_CID,
        "payment": PAYMENT,
        "deadline": deadline,
        "callback": dapp.address,
    }
    job = chain.requests.functions.jobIdOf(request_id).call()
    assert job == request_job_id(chain.chain_id, chain.requests.address, request_id)
    assert balance(chain, chain.requests.address) == PAYMENT

    public = signals(chain, request_id, provider)
    # the gateway (not the provider) submits the provider's proof
    done = chain.send(
        fulfill_call(chain, request_id, provider, proof_for(public), public), gateway, gas=GAS
    )
    print(f"\nask (StatsConsumer -> request) gas: {receipt['gasUsed']}")
    print(f"fulfill gas (6 public signals, callback stores 4 words): {done['gasUsed']}")
    assert chain.events(done, "Fulfilled", chain.requests) == [
        {"requestId": 1, "provider": provider, "outputs": list(STATS)}
    ]
    assert chain.events(done, "CallbackFailed", chain.requests) == []
    assert chain.events(done, "StatsReceived", dapp) == [
        {"requestId": 1, "sum": STATS[0], "countAbove": STATS[1], "meanFloor": STATS[2]}
    ]
    assert dapp.functions.results(1).call() == [*STATS, THRESHOLD, True]
    assert dapp.functions.latestAnswered().call() == 1
    assert balance(chain, provider) == before + PAYMENT
    assert balance(chain, chain.requests.address) == 0
    assert chain.requests.functions.requests(1).call()[4] == 2  # Status.Fulfilled
    assert done["gasUsed"] < proof_gas("fulfill", 6)

    # fulfilled once: a second proof (even a fresh one) is refused
    again = chain.expect_revert(
        fulfill_call(chain, request_id, provider, proof_for(public), public), gateway, gas=GAS
    )
    assert again.name == "AlreadyFulfilled"


def test_the_shipped_private_stats_key_fits_the_dapp(env):
    """The real circuit's key registers with 6 public signals, and a DApp over it
    can ask (its proofs come from the prover; fulfilling is tested above)."""
    chain, _ = env
    shipped = parse_vk(load_json_file(SHIPPED_STATS_VK))
    circuit = chain.register(shipped)
    assert chain.escrow.functions.circuitInfo(circuit).call() == [True, 6]
    dapp = chain.deploy(STATS_CONSUMER, chain.requests.address, circuit, COMMITMENT, DATASET_CID)
    chain.send(chain.token.functions.approve(dapp.address, PAYMENT), chain.addr(1))
    assert ask(chain, dapp) == 1


# ------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "case",
    [
        "wrong_threshold",
        "wrong_commitment",
        "too_few_signals",
        "too_many_signals",
        "binding_of_another_request",
        "binding_with_another_requester",
        "front_runner_names_itself",
        "zero_provider",
        "after_the_deadline",
        "unknown_request",
    ],
)
def test_a_bad_fulfilment_is_refused_and_moves_nothing(env, case):
    chain, dapp = env
    provider, thief = chain.addr(2), chain.addr(4)
    request_id = ask(chain, dapp)
    public = signals(chain, request_id, provider)
    proof = proof_for(public)  # the provider's valid proof; the refusals come before it counts
    expected = {
        "wrong_threshold": "InputsMismatch",
        "wrong_commitment": "InputsMismatch",
        "too_few_signals": "PublicCountMismatch",
        "too_many_signals": "PublicCountMismatch",
        "binding_of_another_request": "BindingMismatch",
        "binding_with_another_requester": "BindingMismatch",
        "front_runner_names_itself": "BindingMismatch",
        "zero_provider": "ZeroProvider",
        "after_the_deadline": "RequestExpired",
        "unknown_request": "UnknownRequest",
    }[case]
    to, rid = provider, request_id
    if case == "wrong_threshold":
        public = signals(chain, request_id, provider, threshold=THRESHOLD + 1)
    elif case == "wrong_commitment":
        public = signals(chain, request_id, provider, commitment=COMMITMENT + 1)
    elif case == "too_few_signals":
        public = public[1:]
    elif case == "too_many_signals":
        public = [0, *public]
    elif case == "binding_of_another_request":
        public = signals(chain, request_id + 1, provider)
    elif case == "binding_with_another_requester":  # bound to the DApp, not ComputeRequests
        job = chain.requests.functions.jobIdOf(request_id).call()
        public = signals(
            chain, request_id, provider, binding=job_binding(job, dapp.address, provider)
        )
    elif case == "front_runner_names_itself":  # copies the provider's proof, names itself
        to = thief
    elif case == "zero_provider":
        to = "0x" + "00" * 20
    elif case == "after_the_deadline":
        deadline = chain.requests.functions.requests(request_id).call()[1]
        chain.travel_to(deadline + 1)
        chain.tester.mine_blocks(1)
    elif case == "unknown_request":
        rid = 99
    before = money(chain, provider, thief)
    call = fulfill_call(chain, rid, to, proof, public)
    got = chain.expect_revert(call, chain.addr(3), gas=GAS)
    assert got.name == expected
    assert money(chain, provider, thief) == before
    assert chain.requests.functions.requests(request_id).call()[4] == 1  # still open


def test_an_invalid_proof_pays_nothing(env):
    chain, dapp = env
    provider = chain.addr(2)
    request_id = ask(chain, dapp)
    public = signals(chain, request_id, provider)
    lying = signals(chain, request_id, provider, outputs=[STATS[0] + 1, *STATS[1:]])
    before = money(chain, provider)
    call = fulfill_call(chain, request_id, provider, proof_for(public), lying)
    assert chain.expect_revert(call, provider, gas=GAS).name == "InvalidProof"
    assert money(chain, provider) == before
    assert refusal_reason("InvalidProof") == "invalid_proof"


# ------------------------------------------------------------ hostile callbacks


@pytest.mark.parametrize("callback", ["reverts", "burns_all_gas", "return_bomb", "no_code"])
def test_a_hostile_callback_cannot_block_the_payment(env, callback):
    chain, _ = env
    provider, requester = chain.addr(2), chain.addr(5)
    target = {
        "reverts": lambda: chain.deploy_code(REVERTER),
        "burns_all_gas": lambda: chain.deploy_code(GAS_BURNER),
        "return_bomb": lambda: chain.deploy_code(RETURN_BOMB),
        "no_code": lambda: chain.addr(6),
    }[callback]()
    receipt = chain.send(
        chain.requests.functions.request(
            CIRCUIT, [THRESHOLD, COMMITMENT], 3, DATASET_CID, PAYMENT, chain.now() + 600, target
        ),
        requester,
    )
    (event,) = chain.events(receipt, "Requested", chain.requests)
    if callback == "reverts":
        print(f"\nrequest gas (an EOA, 2 inputs, a 59-byte CID): {receipt['gasUsed']}")
    public = signals(chain, event["requestId"], provider)
    before = balance(chain, provider)
    done = chain.send(
        fulfill_call(chain, event["requestId"], provider, proof_for(public), public),
        chain.addr(3),
        gas=GAS,
    )
    assert done["status"] == 1
    assert balance(chain, provider) == before + PAYMENT
    failed = chain.events(done, "CallbackFailed", chain.requests)
    if callback == "return_bomb":  # returns normally: a success, nothing copied
        assert failed == []
    else:
        assert failed == [{"requestId": event["requestId"], "callback": target}]
    if callback == "burns_all_gas":  # it got its 500,000 and no more
        assert 500_000 < done["gasUsed"] < 500_000 + proof_gas("fulfill", 6) - 560_000


def test_a_fulfiller_cannot_starve_the_callback(env):
    """With gas for the proof check but not for the callback's allowance,
    fulfill reverts: a fulfiller cannot make the DApp miss its answer on purpose."""
    chain, dapp = env
    provider = chain.addr(2)
    request_id = ask(chain, dapp)
    public = signals(chain, request_id, provider)
    call = fulfill_call(chain, request_id, provider, proof_for(public), public)
    got = chain.expect_revert(call, chain.addr(3), gas=480_000, send=False)
    assert got.name == "InsufficientGasForCallback"
    assert chain.requests.functions.requests(request_id).call()[4] == 1


def test_only_compute_requests_may_call_the_dapp_back(env):
    chain, dapp = env
    request_id = ask(chain, dapp)
    forged = dapp.functions.onComputeResult(request_id, [1, 2, 3, THRESHOLD, COMMITMENT, 0])
    got = chain.expect_revert(forged, chain.addr(4), gas=200_000, contracts=[dapp])
    assert got.name == "NotComputeRequests"
    assert dapp.functions.results(request_id).call()[4] is False


# ------------------------------------------------------------ requests and refunds


def test_refund_after_the_deadline_only(env):
    chain, dapp = env
    request_id = ask(chain, dapp, deadline=chain.now() + 100)
    refund = chain.requests.functions.refund(request_id)
    assert chain.expect_revert(refund, chain.addr(4), gas=200_000).name == "NotExpired"
    chain.travel(101)
    receipt = chain.send(refund, chain.addr(4))  # anyone may trigger it; the money goes back
    assert chain.events(receipt, "Refunded", chain.requests) == [
        {"requestId": request_id, "requester": dapp.address, "amount": PAYMENT}
    ]
    assert balance(chain, dapp.address) == PAYMENT
    assert chain.expect_revert(refund, chain.addr(4), gas=200_000).name == "AlreadyRefunded"
    public = signals(chain, request_id, chain.addr(2))
    late = fulfill_call(chain, request_id, chain.addr(2), proof_for(public), public)
    assert chain.expect_revert(late, chain.addr(3), gas=GAS).name == "AlreadyRefunded"


@pytest.mark.parametrize(
    "case",
    [
        "zero_payment",
        "deadline_now",
        "unknown_circuit",
        "wrong_output_count",
        "input_out_of_field",
        "cid_too_long",
        "no_allowance",
    ],
)
def test_a_bad_request_is_refused(env, case):
    chain, _ = env
    requester = chain.addr(5)
    args = {
        "circuit": CIRCUIT,
        "inputs": [THRESHOLD, COMMITMENT],
        "n_outputs": 3,
        "cid": DATASET_CID,
        "payment": PAYMENT,
        "deadline": chain.now() + 600,
    }
    expected = {
        "zero_payment": "ZeroPayment",
        "deadline_now": "DeadlinePassed",
        "unknown_circuit": "UnknownCircuit",
        "wrong_output_count": "PublicCountMismatch",
        "input_out_of_field": "InputOutOfField",
        "cid_too_long": "CidTooLong",
        "no_allowance": "ERC20InsufficientAllowance",
    }[case]
    if case == "zero_payment":
        args["payment"] = 0
    elif case == "deadline_now":
        args["deadline"] = chain.now()
    elif case == "unknown_circuit":
        args["circuit"] = b"\x07" * 32
    elif case == "wrong_output_count":
        args["n_outputs"] = 2
    elif case == "input_out_of_field":
        args["inputs"] = [THRESHOLD, 2**256 - 1]
    elif case == "cid_too_long":
        args["cid"] = "b" * 257
    elif case == "no_allowance":
        requester = chain.addr(6)
        chain.fund(requester, PAYMENT)
    call = chain.requests.functions.request(
        args["circuit"], args["inputs"], args["n_outputs"], args["cid"], args["payment"],
        args["deadline"], "0x" + "00" * 20,
    )  # fmt: skip
    assert chain.expect_revert(call, requester, gas=300_000).name == expected
    assert chain.requests.functions.requestCount().call() == 0


# ------------------------------------------------------------ deployment and the Python shell


def test_deploy_puts_compute_requests_beside_the_escrow():
    chain = EmbeddedChain()
    key = chain.dev_keys()[0]
    d = deploy(chain, key, Account.from_key(key).address, 10**6 * MASK, 60, 60)
    assert d.requests is not None and d.config(None).requests == d.requests
    requests = chain.contract(d.requests, load_artifact(REQUESTS).abi)
    assert chain.call(requests, "verifier") == d.escrow
    assert chain.call(requests, "token") == d.token
    escrow = chain.contract(d.escrow, load_artifact(ESCROW).abi)
    assert chain.call(escrow, "CLAIM_WINDOW") == 30 * 24 * 3600


def test_zkchain_registers_requests_fulfils_and_reads_events():
    chain = EmbeddedChain()
    keys = chain.dev_keys()
    d = deploy(chain, keys[0], Account.from_key(keys[0]).address, 10**6 * MASK, 60, 60)
    requester_key, gateway_key = keys[1], keys[2]
    provider = Account.from_key(keys[3]).address
    fund(chain, keys[0], Account.from_key(requester_key).address, 0, 100 * MASK, token=d.token)

    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        requester = ZkChain(chain, d.token, d.escrow, d.requests, requester_key, limiter)
        gateway = ZkChain(chain, d.token, d.escrow, d.requests, gateway_key, limiter,
                          poll_interval_s=0.01)  # fmt: skip
        circuit = await requester.register_circuit(vk_calldata(SETUP.vk))
        assert circuit == vk_id(SETUP.vk)
        assert await gateway.circuit_info(circuit) == (True, 6)
        deadline = chain.block_timestamp() + 3600
        asked = await requester.request(
            circuit, [THRESHOLD, COMMITMENT], 3, DATASET_CID, PAYMENT, deadline
        )
        assert (asked.request_id, asked.inputs, asked.payment) == (
            1,
            (THRESHOLD, COMMITMENT),
            PAYMENT,
        )
        # the gateway finds the request by its event and places job_id_of on the mesh
        (seen,) = await gateway.requested(0, chain.block_number())
        assert seen == asked
        job = await gateway.job_id_of(seen.request_id)
        assert job == request_job_id(chain.chain_id, d.requests, 1).hex()
        public = [*STATS, THRESHOLD, COMMITMENT, job_binding(job, d.requests, provider)]
        proof = proof_for(public)
        with pytest.raises(RevertError) as refused:  # a refusal is decoded before sending
            await gateway.fulfill(1, Account.from_key(gateway_key).address, proof, public)
        assert refused.value.error_name == "BindingMismatch"
        assert "binding" in str(refused.value) and refused.value.hint
        done, failed = await gateway.fulfill(1, provider, proof, public)
        assert (done.request_id, done.provider, done.outputs, failed) == (1, provider, STATS, None)
        assert (await gateway.request_state(1)).status == "fulfilled"
        assert [f.request_id for f in await gateway.fulfilled(0, chain.block_number())] == [1]
        token = chain.contract(d.token, load_artifact("MaskToken").abi)
        assert chain.call(token, "balanceOf", provider) == PAYMENT

    trio.run(main)
