"""EIP-712 agreements: the signer recovers to the account; any changed field breaks it."""

import msgspec
import pytest
from eth_account import Account

from ledger.agreement import (
    ZERO_ADDRESS,
    AccountKeys,
    recover_agreement_signer,
    sign_agreement,
    sign_result,
    verify_agreement,
    verify_result,
)
from protocol.market import AgreementTerms, JobResult, UsageReport

REQ_KEY, PROV_KEY = bytes([101]) * 32, bytes([102]) * 32
REQ, PROV = Account.from_key(REQ_KEY).address, Account.from_key(PROV_KEY).address

TERMS = AgreementTerms(
    job_id="ab" * 32,
    requester_peer="12D3KooWRequester",
    requester_account=REQ,
    provider_peer="12D3KooWProvider",
    provider_account=PROV,
    price_total=str(10**24),
    cpu=2,
    memory_mb=512,
    gpu=0,
    max_seconds=60,
    max_fuel=0,
    deadline=1_700_000_300,
    spec_cid="bafkreispec",
    heartbeat_interval_ms=1000,
    chain_id=31337,
    verifying_contract=ZERO_ADDRESS,
)


def test_signer_recovers_to_the_account():
    sig = sign_agreement(TERMS, REQ_KEY)
    assert len(sig) == 65
    assert recover_agreement_signer(TERMS, sig) == REQ
    assert verify_agreement(TERMS, sig, REQ)
    assert not verify_agreement(TERMS, sig, PROV)


@pytest.mark.parametrize(
    "change",
    [
        {"job_id": "cd" * 32},
        {"price_total": str(10**24 + 1)},
        {"provider_account": REQ},
        {"provider_peer": "12D3KooWOther"},
        {"memory_mb": 513},
        {"max_seconds": 61},
        {"deadline": 1_700_000_301},
        {"spec_cid": "bafkreiother"},
        {"heartbeat_interval_ms": 2000},
        {"chain_id": 1},
        {"verifying_contract": "0x" + "11" * 20},
    ],
)
def test_any_changed_field_breaks_verification(change):
    sig = sign_agreement(TERMS, REQ_KEY)
    assert not verify_agreement(msgspec.structs.replace(TERMS, **change), sig, REQ)


def test_garbage_signature_and_malformed_terms_do_not_raise():
    assert recover_agreement_signer(TERMS, b"\x00" * 65) is None or not verify_agreement(
        TERMS, b"\x00" * 65, REQ
    )
    assert not verify_agreement(TERMS, b"short", REQ)
    bad = msgspec.structs.replace(TERMS, job_id="not-hex")
    assert not verify_agreement(bad, sign_agreement(TERMS, REQ_KEY), REQ)


def test_both_parties_sign_the_same_terms():
    keys_r, keys_p = AccountKeys(REQ_KEY), AccountKeys(PROV_KEY)
    assert (keys_r.account, keys_p.account) == (REQ, PROV)
    sig_r, sig_p = keys_r.sign_agreement(TERMS), keys_p.sign_agreement(TERMS)
    assert keys_p.verify_agreement(TERMS, sig_r, REQ) and keys_r.verify_agreement(
        TERMS, sig_p, PROV
    )
    assert "101" not in repr(keys_r) and REQ in repr(keys_r)


def test_result_signature_covers_every_field():
    result = JobResult(
        job_id="ab" * 32,
        peer_id="12D3KooWProvider",
        output_cid="bafkreiout",
        usage=UsageReport(fuel=5, wall_ms=7),
        stdout_sha256=b"\x01" * 32,
        stderr_sha256=b"\x02" * 32,
        exit_code=0,
    )
    signed = msgspec.structs.replace(result, signature=sign_result(result, PROV_KEY))
    assert verify_result(signed, PROV)
    assert not verify_result(signed, REQ)
    assert not verify_result(msgspec.structs.replace(signed, output_cid="bafkreievil"), PROV)
    assert not verify_result(msgspec.structs.replace(signed, exit_code=1), PROV)
    assert not verify_result(msgspec.structs.replace(signed, signature=b"junk"), PROV)
