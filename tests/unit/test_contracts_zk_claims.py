"""SettlementEscrow's zk dispute paths on a real EVM: claimWithProof pays a
provider whose requester refused to pay for a proven zk job (and raises
`settled`, so a voucher that covers the job pays only the rest); every bad
claim reverts with its own error and moves nothing; slash takes a provider's
stake on a signed wrong result (half to the reporter, half burned) and never on
a correct one; the Python EIP-712 digests (ledger.zkclaims, ledger.agreement)
equal the contract's (docs/ledger.md, "zk disputes and slashing").

Proofs come from zkp.testing.TrapdoorSetup (valid for any public signals, no
circuit needed). py-evm's pairing takes ~1 s, so transactions that verify a
proof set their gas (no estimate) and tests share as few checks as they can.
"""

from __future__ import annotations

import msgspec
import pytest
import trio
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from ledger.agreement import AGREEMENT_TYPES, agreement_message, sign_agreement
from ledger.chain import EmbeddedChain, RevertError
from ledger.contracts import (
    CLAIM_REFUSALS,
    SLASH_REFUSALS,
    Revert,
    decode_revert,
    refusal_reason,
)
from ledger.deploy import deploy, deposit, fund
from ledger.escrow import ChainEscrow
from ledger.ports import ChainError
from ledger.vouchers import Domain
from ledger.zkchain import ZkChain
from ledger.zkclaims import (
    ZK_RESULT_TYPES,
    ZkClaimError,
    agreement_args,
    claim_args,
    proof_hash,
    public_hash,
    recover_zk_result_signer,
    sign_zk_result,
    slash_args,
    verify_zk_result,
    zk_job_args,
    zk_result_digest,
    zk_result_message,
)
from protocol.market import AgreementTerms
from tests.chainhelp import Chain, TransactionFailed, new_chain, revert_data
from zkp.binding import job_binding
from zkp.formats import proof_calldata, vk_calldata, vk_id
from zkp.testing import TrapdoorSetup

GAS = 1_500_000
PRICE = 7 * 10**18
STAKE = 100 * 10**18 + 1  # odd: the burned half gets the extra unit
DEAD = "0x000000000000000000000000000000000000dEaD"
CLAIM_WINDOW = 30 * 24 * 3600
JOB = "11" * 32
OUTPUT = 42

SETUP = TrapdoorSetup.new(2, seed=10)  # public signals: one output, the binding
CIRCUIT = vk_id(SETUP.vk)


@pytest.fixture(scope="module")
def base():
    chain = new_chain(accounts=6)
    chain.register(SETUP.vk)
    for i in (1, 5):  # requesters
        chain.fund(chain.addr(i), 1000 * 10**18)
        chain.deposit(chain.addr(i), 100 * 10**18)
    for i in (2, 3):  # providers
        chain.fund(chain.addr(i), 1000 * 10**18)
        chain.approve(chain.addr(i), STAKE)
        chain.send(chain.escrow.functions.stake(STAKE), chain.addr(i))
    return chain


@pytest.fixture
def chain(base):
    snap = base.snapshot()
    yield base
    base.revert_to(snap)


def terms(chain: Chain, **change) -> AgreementTerms:
    t = AgreementTerms(
        job_id=JOB,
        requester_peer="12D3KooWRequester",
        requester_account=chain.addr(1),
        provider_peer="12D3KooWProvider",
        provider_account=chain.addr(2),
        price_total=str(PRICE),
        cpu=2,
        memory_mb=512,
        gpu=0,
        max_seconds=60,
        max_fuel=10**9,
        deadline=chain.now() + 3600,
        spec_cid="bafkreispec",
        heartbeat_interval_ms=1000,
        chain_id=chain.chain_id,
        verifying_contract=chain.escrow.address,
        circuit_id=CIRCUIT,
    )
    return msgspec.structs.replace(t, **change)


def proven(t: AgreementTerms, output: int = OUTPUT, *, binding: int | None = None):
    """A valid proof for [output, binding of t] (or of ``binding``)."""
    bound = (
        job_binding(t.job_id, t.requester_account, t.provider_account)
        if binding is None
        else binding
    )
    public = [output, bound]
    return proof_calldata(SETUP.prove(public)), public


def view(chain: Chain, name: str, *args):
    return getattr(chain.escrow.functions, name)(*args).call()


def money(chain: Chain, t: AgreementTerms) -> tuple:
    req, prov = t.requester_account, t.provider_account
    return (
        view(chain, "deposits", req),
        view(chain, "earnings", prov),
        view(chain, "settled", req, prov),
        view(chain, "stakes", prov),
        chain.token.functions.balanceOf(chain.escrow.address).call(),
    )


def claim_call(t: AgreementTerms, signature: bytes, proof, public, chain: Chain):
    return chain.escrow.functions.claimWithProof(*claim_args(t, signature, proof, public))


def claim(chain: Chain, t: AgreementTerms, signature: bytes, proof, public, sender=None):
    call = claim_call(t, signature, proof, public, chain)
    return chain.send(call, sender or t.provider_account, gas=GAS)


def reverts(chain: Chain, call, sender: str, gas: int = GAS) -> Revert:
    """The custom error ``call`` reverts with; the transaction is then sent too
    and must fail. (With its gas set, eth-tester mines a reverting transaction
    with status 0 instead of raising, as a real node does.)"""
    with pytest.raises(TransactionFailed) as err:
        call.call({"from": sender, "gas": gas})
    decoded = decode_revert(chain.escrow.abi, revert_data(err.value))
    assert decoded is not None, f"not a custom error: {err.value}"
    assert chain.send(call, sender, gas=gas)["status"] == 0
    return decoded


# ------------------------------------------------------------- digests


def test_the_contract_hashes_agreements_as_ledger_agreement_signs_them(chain):
    for t in (terms(chain), terms(chain, circuit_id="", requester_peer="é" * 40, gpu=3)):
        signable = encode_typed_data(
            {
                "name": "maskd",
                "version": "1",
                "chainId": t.chain_id,
                "verifyingContract": t.verifying_contract,
            },
            AGREEMENT_TYPES,
            agreement_message(t),
        )
        digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
        assert view(chain, "agreementDigest", agreement_args(t)) == digest


def test_the_contract_hashes_zk_results_as_ledger_zkclaims_signs_them(chain):
    t = terms(chain)
    proof, public = proven(t)
    job = zk_job_args(t.job_id, t.requester_account, t.provider_account, CIRCUIT)
    on_chain = view(chain, "zkResultDigest", job, proof, public)
    assert on_chain == zk_result_digest(
        chain.domain, t.job_id, t.requester_account, t.provider_account, CIRCUIT, proof, public
    )
    assert public_hash(public) != proof_hash(proof)


def test_zk_result_signatures_recover_to_the_provider_only(chain):
    t = terms(chain)
    proof, public = proven(t)
    args = (t.job_id, t.requester_account, t.provider_account, CIRCUIT, proof, public)
    sig = sign_zk_result(chain.domain, chain.key(2), *args)
    assert verify_zk_result(chain.domain, *args, sig)
    assert recover_zk_result_signer(chain.domain, *args, sig) == chain.addr(2)
    changed = (t.job_id, t.requester_account, t.provider_account, CIRCUIT, proof, [1, public[1]])
    assert not verify_zk_result(chain.domain, *changed, sig)
    other_domain = type(chain.domain)(chain.chain_id + 1, chain.escrow.address)
    assert not verify_zk_result(other_domain, *args, sig)
    # hostile input is False/None, never an exception
    for bad_sig in (b"", sig[:64], sig[:64] + b"\x05", b"\xff" * 65):
        assert not verify_zk_result(chain.domain, *args, bad_sig)
    bad_args = (t.job_id, t.requester_account, "0x12", CIRCUIT, proof[:7], public)
    assert recover_zk_result_signer(chain.domain, *bad_args, sig) is None
    with pytest.raises(ZkClaimError, match="own results"):
        sign_zk_result(chain.domain, chain.key(3), *args)
    with pytest.raises(ZkClaimError, match="8 uint256"):
        slash_args(t.job_id, chain.addr(1), chain.addr(2), CIRCUIT, sig, proof[:7], public)
    with pytest.raises(ZkClaimError, match="at most 256"):
        claim_args(t, sig, proof, [0] * 257)
    with pytest.raises(ZkClaimError, match="uint256"):
        claim_args(t, sig, proof, [-1, 0])


def test_refusal_reasons_are_snake_case():
    assert CLAIM_REFUSALS["BadAgreementSignature"] == "bad_agreement_signature"
    assert SLASH_REFUSALS["NotSlashable"] == "not_slashable"
    assert refusal_reason("InsufficientDeposit") == "insufficient_deposit"


# --------------------------------------------------------------- claims


def test_an_honest_claim_pays_and_a_covering_voucher_pays_only_the_rest(chain):
    t = terms(chain)
    sig = chain.sign_agreement(chain.key(1), t)
    proof, public = proven(t)
    deposit, earnings, settled, _, _ = money(chain, t)
    receipt = claim(chain, t, sig, proof, public, sender=chain.addr(4))  # anyone may submit
    print(f"\nclaimWithProof gas (2 public signals): {receipt['gasUsed']}")
    assert chain.events(receipt, "ProofClaimed") == [
        {
            "jobId": bytes.fromhex(JOB),
            "requester": t.requester_account,
            "provider": t.provider_account,
            "amount": PRICE,
        }
    ]
    after = money(chain, t)
    assert after[:3] == (deposit - PRICE, earnings + PRICE, settled + PRICE)
    assert view(chain, "claimed", bytes.fromhex(JOB), t.provider_account)
    assert not view(chain, "claimed", bytes.fromhex(JOB), chain.addr(3))

    # The requester's next voucher counts the claimed job and one more (3 MASK):
    # the escrow pays only the 3 MASK, never the claimed job twice.
    voucher = chain.sign_voucher(chain.key(1), t.provider_account, PRICE + 3 * 10**18)
    settled_rc = chain.settle([voucher])
    assert [e["paid"] for e in chain.events(settled_rc, "VoucherSettled")] == [3 * 10**18]
    # A voucher that counts only the claimed job pays nothing.
    stale = chain.sign_voucher(chain.key(1), t.provider_account, PRICE)
    assert [e["reason"] for e in chain.events(chain.settle([stale]), "VoucherSkipped")] == [2]
    assert receipt["gasUsed"] < 340_000

    again = reverts(chain, claim_call(t, sig, proof, public, chain), t.provider_account)
    assert again.name == "AlreadyClaimed"


def test_a_claim_with_an_invalid_proof_gains_nothing(chain):
    t = terms(chain)
    sig = chain.sign_agreement(chain.key(1), t)
    proof, public = proven(t, output=OUTPUT)
    before = money(chain, t)
    wrong_output = [OUTPUT + 1, public[1]]  # the proof is for 42, not 43
    call = claim_call(t, sig, proof, wrong_output, chain)
    assert reverts(chain, call, t.provider_account).name == "InvalidProof"
    assert money(chain, t) == before
    assert not view(chain, "claimed", bytes.fromhex(JOB), t.provider_account)


@pytest.mark.parametrize(
    "case",
    [
        "proof_for_another_job",
        "claimed_for_another_provider",
        "signed_by_someone_else",
        "signed_for_another_escrow",
        "not_a_zk_job",
        "no_public_signals",
        "window_closed",
    ],
)
def test_a_bad_claim_reverts_with_its_reason_and_moves_nothing(chain, case):
    t = terms(chain)
    key = chain.key(1)
    proof, public = proven(t)
    expected = {
        "proof_for_another_job": "BindingMismatch",
        "claimed_for_another_provider": "BindingMismatch",
        "signed_by_someone_else": "BadAgreementSignature",
        "signed_for_another_escrow": "BadAgreementSignature",
        "not_a_zk_job": "NotZkJob",
        "no_public_signals": "BindingMismatch",
        "window_closed": "ClaimWindowClosed",
    }[case]
    signed = t
    if case == "proof_for_another_job":
        proof, public = proven(
            t, binding=job_binding("22" * 32, t.requester_account, chain.addr(2))
        )
    elif case == "claimed_for_another_provider":
        # provider 3 submits provider 2's proof under an agreement naming itself
        t = signed = terms(chain, provider_account=chain.addr(3))
    elif case == "signed_by_someone_else":
        key = chain.key(5)
    elif case == "signed_for_another_escrow":
        signed = terms(chain, verifying_contract=chain.requests.address)
    elif case == "not_a_zk_job":
        t = signed = terms(chain, circuit_id="")
    elif case == "no_public_signals":
        public = []
    sig = chain.sign_agreement(key, signed)
    if case == "window_closed":
        chain.travel_to(t.deadline + CLAIM_WINDOW + 1)
        chain.tester.mine_blocks(1)  # calls read the latest block's time
    before = money(chain, t)
    got = reverts(chain, claim_call(t, sig, proof, public, chain), t.provider_account)
    assert got.name == expected
    assert money(chain, t) == before
    if case == "window_closed":
        assert got.args == {"closedAt": t.deadline + CLAIM_WINDOW}


def test_a_claim_beyond_the_deposit_reverts(chain):
    t = terms(chain, requester_account=chain.addr(5), price_total=str(101 * 10**18))
    sig = chain.sign_agreement(chain.key(5), t)
    proof, public = proven(t)
    before = money(chain, t)
    got = reverts(chain, claim_call(t, sig, proof, public, chain), t.provider_account)
    assert got.name == "InsufficientDeposit"
    assert got.args == {"available": 100 * 10**18, "wanted": 101 * 10**18}
    assert money(chain, t) == before


def test_a_claim_on_the_last_second_of_the_window_pays(chain):
    t = terms(chain)
    sig = chain.sign_agreement(chain.key(1), t)
    proof, public = proven(t)
    chain.travel_to(t.deadline + CLAIM_WINDOW)
    claim(chain, t, sig, proof, public)
    assert view(chain, "claimed", bytes.fromhex(JOB), t.provider_account)


# ---------------------------------------------------------------- slash


def evidence(chain: Chain, t: AgreementTerms, proof, public, key: bytes | None = None):
    """slash's arguments for a result the provider signed (or ``key``, a forger,
    signed in the provider's name)."""
    args = (t.job_id, t.requester_account, t.provider_account, CIRCUIT, proof, public)
    if key is None:
        sig = sign_zk_result(chain.domain, chain.key(2), *args)
    else:
        message = zk_result_message(*args)
        sig = bytes(
            Account.sign_typed_data(key, chain.domain.typed(), ZK_RESULT_TYPES, message).signature
        )
    return slash_args(*args[:4], sig, proof, public)


def slash(chain: Chain, args, sender: str, gas: int = GAS):
    return chain.send(chain.escrow.functions.slash(*args), sender, gas=gas)


def slash_refused(chain: Chain, args, sender: str, gas: int = GAS) -> str:
    return reverts(chain, chain.escrow.functions.slash(*args), sender, gas).name


def test_a_signed_wrong_output_slashes_the_whole_stake(chain):
    t = terms(chain)
    proof, public = proven(t)
    wrong = [OUTPUT + 1, public[1]]  # the provider claims 43 with a proof of 42
    args = evidence(chain, t, proof, wrong)
    reporter = chain.addr(4)
    escrow_before = money(chain, t)[4]
    receipt = slash(chain, args, reporter)
    print(f"\nslash gas (2 public signals, proof checked): {receipt['gasUsed']}")
    assert chain.events(receipt, "Slashed") == [
        {
            "provider": t.provider_account,
            "jobId": bytes.fromhex(JOB),
            "amount": STAKE,
            "reporter": reporter,
        }
    ]
    assert view(chain, "stakes", t.provider_account) == 0
    assert chain.token.functions.balanceOf(reporter).call() == STAKE // 2
    assert chain.token.functions.balanceOf(DEAD).call() == STAKE - STAKE // 2
    assert money(chain, t)[4] == escrow_before - STAKE
    assert view(chain, "slashed", bytes.fromhex(JOB), t.provider_account)

    # the same evidence again, even once the provider has staked again
    assert slash_refused(chain, args, reporter) == "AlreadySlashed"
    chain.approve(t.provider_account, STAKE)
    chain.send(chain.escrow.functions.stake(STAKE), t.provider_account)
    assert slash_refused(chain, args, reporter) == "AlreadySlashed"
    assert view(chain, "stakes", t.provider_account) == STAKE


def test_a_signed_result_bound_to_another_job_is_slashable_without_a_pairing(chain):
    t = terms(chain)
    proof, public = proven(t, binding=job_binding("22" * 32, t.requester_account, chain.addr(2)))
    receipt = slash(chain, evidence(chain, t, proof, public), chain.addr(4))
    assert receipt["gasUsed"] < 150_000  # the binding check failed first: no proof check
    assert view(chain, "stakes", t.provider_account) == 0


def test_a_correct_result_is_not_slashable(chain):
    t = terms(chain)
    proof, public = proven(t)
    args = evidence(chain, t, proof, public)
    before = money(chain, t)
    assert slash_refused(chain, args, chain.addr(4)) == "NotSlashable"
    # starving the proof check cannot turn it into a slash
    got = reverts(chain, chain.escrow.functions.slash(*args), chain.addr(4), gas=180_000)
    assert got.name == "VerifierOutOfGas"
    assert money(chain, t) == before


@pytest.mark.parametrize(
    "case", ["forged_signature", "signature_for_another_job", "zero_stake", "unknown_circuit"]
)
def test_slash_refuses_bad_evidence(chain, case):
    t = terms(chain)
    proof, public = proven(t)
    wrong = [OUTPUT + 1, public[1]]
    args = evidence(chain, t, proof, wrong)
    expected = {
        "forged_signature": "BadResultSignature",
        "signature_for_another_job": "BadResultSignature",
        "zero_stake": "NothingToSlash",
        "unknown_circuit": "UnknownCircuit",
    }[case]
    if case == "forged_signature":  # the reporter signs in the provider's name
        args = evidence(chain, t, proof, wrong, key=chain.key(4))
    elif case == "signature_for_another_job":
        job, sig, p, pub = args
        args = ((bytes.fromhex("33" * 32), *job[1:]), sig, p, pub)
    elif case == "zero_stake":
        t = terms(chain, provider_account=chain.addr(4))
        args = slash_args(
            t.job_id,
            t.requester_account,
            t.provider_account,
            CIRCUIT,
            sign_zk_result(
                chain.domain,
                chain.key(4),
                t.job_id,
                t.requester_account,
                t.provider_account,
                CIRCUIT,
                proof,
                wrong,
            ),
            proof,
            wrong,
        )
    elif case == "unknown_circuit":
        other = "44" * 32
        args = slash_args(
            t.job_id,
            t.requester_account,
            t.provider_account,
            other,
            sign_zk_result(
                chain.domain,
                chain.key(2),
                t.job_id,
                t.requester_account,
                t.provider_account,
                other,
                proof,
                wrong,
            ),
            proof,
            wrong,
        )
    before = money(chain, t)
    assert slash_refused(chain, args, chain.addr(4)) == expected
    assert money(chain, t) == before


# ------------------------------------------------------------ the Python shell


def test_zkchain_claims_and_slashes_with_decoded_refusals():
    chain = EmbeddedChain()
    keys = chain.dev_keys()
    d = deploy(chain, keys[0], Account.from_key(keys[0]).address, 10**6 * 10**18, 60, 60)
    requester_key, provider_key, reporter_key = keys[1], keys[2], keys[3]
    requester = Account.from_key(requester_key).address
    provider = Account.from_key(provider_key).address
    for key in (requester_key, provider_key):
        fund(chain, keys[0], Account.from_key(key).address, 0, 1000 * 10**18, token=d.token)
    deposit(chain, requester_key, d.escrow, d.token, 100 * 10**18)
    t = AgreementTerms(
        job_id=JOB, requester_peer="12D3KooWRequester", requester_account=requester,
        provider_peer="12D3KooWProvider", provider_account=provider, price_total=str(PRICE),
        cpu=1, memory_mb=64, gpu=0, max_seconds=60, max_fuel=0,
        deadline=chain.block_timestamp() + 3600, spec_cid="bafkreispec",
        heartbeat_interval_ms=1000, chain_id=chain.chain_id, verifying_contract=d.escrow,
        circuit_id=CIRCUIT,
    )  # fmt: skip
    proof, public = proven(t)

    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        as_provider = ZkChain(chain, d.token, d.escrow, d.requests, provider_key, limiter,
                              poll_interval_s=0.01)  # fmt: skip
        reporter = ZkChain(chain, d.token, d.escrow, d.requests, reporter_key, limiter,
                           poll_interval_s=0.01)  # fmt: skip
        assert await as_provider.register_circuit(vk_calldata(SETUP.vk)) == CIRCUIT
        forged = sign_agreement(t, reporter_key)
        with pytest.raises(RevertError) as refused:
            await as_provider.claim_with_proof(t, forged, proof, public)
        assert refused.value.error_name == "BadAgreementSignature"
        assert refusal_reason(refused.value.error_name) in CLAIM_REFUSALS.values()
        assert "not signed by its requester" in str(refused.value) and refused.value.hint
        with pytest.raises(ChainError, match="8 uint256"):  # malformed: never sent
            await as_provider.claim_with_proof(t, forged, proof[:7], public)

        paid = await as_provider.claim_with_proof(
            t, sign_agreement(t, requester_key), proof, public
        )
        assert (paid.job_id, paid.provider, paid.amount) == (JOB, provider, PRICE)
        assert await as_provider.claimed(JOB, provider)
        assert [c.amount for c in await reporter.proofs_claimed(0, chain.block_number())] == [PRICE]

        # the provider stakes, then signs a result bound to another job: slashable
        escrow = ChainEscrow(chain, d.token, d.escrow, provider_key, limiter,
                             sender=as_provider.sender)  # fmt: skip
        await escrow.stake(10 * 10**18)
        other = job_binding("22" * 32, requester, provider)
        bad_public = [OUTPUT, other]
        bad_proof = proof_calldata(SETUP.prove(bad_public))
        domain = Domain(chain.chain_id, d.escrow)
        sig = sign_zk_result(domain, provider_key, JOB, requester, provider, CIRCUIT,
                             bad_proof, bad_public)  # fmt: skip
        slashed = await reporter.slash(
            JOB, requester, provider, CIRCUIT, sig, bad_proof, bad_public
        )
        assert (slashed.provider, slashed.amount, slashed.reporter) == (
            provider, 10 * 10**18, reporter.address,
        )  # fmt: skip
        assert await reporter.slashed(JOB, provider)
        with pytest.raises(RevertError) as again:
            await reporter.slash(JOB, requester, provider, CIRCUIT, sig, bad_proof, bad_public)
        assert again.value.error_name == "AlreadySlashed"

    trio.run(main)
