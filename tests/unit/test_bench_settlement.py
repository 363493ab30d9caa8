"""bench/settlement.py in --quick mode: it runs, its lines keep their shape, and
netting shows (a voucher covering 100 jobs costs far less per job than an
ERC-20 transfer per job). A few seconds on the in-process EVM."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ledger.vouchers import sign_voucher

_PATH = Path(__file__).resolve().parents[2] / "bench" / "settlement.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_settlement", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

SETTLE_KEYS = {
    "bench",
    "kind",
    "settlement",
    "jobs_per_channel",
    "channels",
    "gas_total",
    "gas_per_voucher",
    "gas_per_job",
    "vs_erc20",
}


def test_quick_run_prints_its_records_and_shows_netting(capsys: pytest.CaptureFixture[str]) -> None:
    records = bench.main(["--quick"])

    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == records
    by_kind: dict[str, list[dict]] = {}
    for r in records:
        assert r["bench"] == "settlement"
        by_kind.setdefault(r["kind"], []).append(r)
    assert set(by_kind) == {"erc20_transfer", "settle", "target", "vouchers"}

    (baseline,) = by_kind["erc20_transfer"]
    assert 30_000 < baseline["gas"] < 60_000  # one ERC-20 transfer to a holder

    settles = by_kind["settle"]
    assert {(r["jobs_per_channel"], r["channels"], r["settlement"]) for r in settles} == {
        (j, c, s) for j in (1, 100) for c in (1, 10) for s in ("first", "second")
    }
    for r in settles:
        assert set(r) == SETTLE_KEYS
        assert r["gas_total"] > 21_000
        assert r["gas_per_job"] == pytest.approx(
            r["gas_total"] / (r["jobs_per_channel"] * r["channels"]), abs=0.1
        )
    hundred = [r for r in settles if r["jobs_per_channel"] == 100]
    assert hundred and all(r["gas_per_job"] < baseline["gas"] for r in hundred)
    # One settlement of a channel costs the same whatever number of jobs it nets.
    for r in hundred:
        (one,) = (
            o
            for o in settles
            if o["jobs_per_channel"] == 1
            and (o["channels"], o["settlement"]) == (r["channels"], r["settlement"])
        )
        assert r["gas_per_voucher"] == pytest.approx(one["gas_per_voucher"], rel=0.01)

    (target,) = by_kind["target"]
    assert (target["jobs_per_channel"], target["channels"]) == (100, 10)
    assert target["target_gas_per_job"] == 2_000
    assert target["met"] is (max(target["gas_per_job_first"], target["gas_per_job_second"]) < 2_000)

    (vouchers,) = by_kind["vouchers"]
    assert vouchers["vouchers"] == 200
    assert vouchers["ecc_backend"] == "CoinCurveECCBackend"
    assert vouchers["signed_per_s"] > 0 and vouchers["verified_per_s"] > 0


def test_a_skipped_voucher_fails_the_run_instead_of_flattering_it() -> None:
    setup = bench.SettlementBench(requesters=2, deposit_each=10**18)
    provider = setup.new_provider()
    honest = sign_voucher(setup.domain, setup.requester_keys[0], provider, 10**15)
    # Signed by requester 1's key for requester 0's channel: BAD_SIGNATURE.
    forged = sign_voucher(setup.domain, setup.requester_keys[1], provider, 10**15)
    forged = type(forged)(honest.requester, provider, 2 * 10**15, forged.signature)
    with pytest.raises(RuntimeError, match="paid 1 of 2 vouchers"):
        setup.settle([honest, forged])
