"""What settling a job costs: gas on the in-process EVM, and the ledger's CPU.

A requester pays a provider with one cumulative voucher per channel
(docs/ledger.md): the channel's total so far, so a provider that settles once
after J jobs pays for one voucher, not J payments. This measures how far that
netting goes, against the naive alternative of one ERC-20 transfer per job.

In one run on a fresh embedded chain (eth-tester / py-evm, Prague, the
committed contracts, deployed by ``ledger.deploy``):

1. ``erc20_transfer``: gas of one MASK ``transfer`` to an existing holder (the
   sender keeps a balance): the baseline per job.
2. ``settle``: for each jobs-per-channel J and channels-per-batch C, C
   requesters (each with a deposit, through ``depositWithPermit``) sign one
   voucher each to one fresh provider with ``cumulative = J * price``; one
   ``settleBatch`` carries the C vouchers (``settlement: "first"``). Then each
   channel's total is raised by another J jobs and settled again
   (``"second"``: the channel's ``settled`` slot and the provider's earnings
   are no longer zero, so the storage writes are cheaper). Each line gives the
   transaction's gas, per voucher and per job (``gas_total / (C * J)``), and
   the ratio to the baseline. Every voucher must be paid (a ``VoucherSettled``
   each, no ``VoucherSkipped``), or the run fails: a skipped voucher costs
   less and would flatter the figures.
3. ``target``: J=100, C=50 (``--target``) against the target of under 2,000
   gas per job; ``met`` holds when both settlements are under it.
4. ``vouchers``: ``ledger.vouchers.sign_voucher`` and ``verify_voucher`` over
   ``--vouchers`` vouchers on one core (CPU time, and wall time for
   reference), with the ECC backend eth_keys uses (coincurve when installed).

Gas does not depend on the machine; the voucher rates do. Requesters are
reused across cases (their deposit is non-zero throughout, as for any real
channel); the provider is new in each case, so a first settlement also pays
for its earnings slot going from zero, as a provider's first batch does.

Run: .venv/bin/python bench/settlement.py [--jobs 1,10,100] [--channels 1,10,100]
     [--target 100x50] [--vouchers 2000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger.chain import ChainClient, Receipt  # noqa: E402
from ledger.contracts import ESCROW, TOKEN, load_artifact, voucher_args  # noqa: E402
from ledger.deploy import Deployment, deploy, deposit, fund  # noqa: E402
from ledger.vouchers import Domain, SignedVoucher, sign_voucher, verify_voucher  # noqa: E402

TARGET_GAS_PER_JOB = 2_000
PRICE = 10**15  # 0.001 MASK per job; gas hardly depends on it
SUPPLY = 10**9 * 10**18
REQUESTER_ETH = 10**17  # gas money for one deposit transaction
# settleBatch's gas limit: generous (gas used does not depend on it), and
# under the EIP-7825 cap of 16,777,216 for the largest batch allowed.
_GAS_PER_VOUCHER_LIMIT = 80_000
_GAS_BASE_LIMIT = 200_000
MAX_CHANNELS = 200  # ~260 first-time vouchers fit under the cap (notes/evm.md)
MAX_JOBS = 10**6


@dataclass(frozen=True, slots=True)
class Case:
    jobs: int  # jobs per channel, netted into one voucher
    channels: int  # vouchers (requester-provider channels) in one settleBatch


class SettlementBench:
    """A fresh embedded chain with the contracts, ``requesters`` funded requesters
    with deposits, and a sender for the batches."""

    def __init__(self, requesters: int, deposit_each: int) -> None:
        self.chain = ChainClient.embedded()
        keys = self.chain.dev_keys()
        self.treasury_key, self.sender_key = keys[0], keys[1]
        treasury = Account.from_key(self.treasury_key).address
        self.deployment: Deployment = deploy(
            self.chain, self.treasury_key, treasury, SUPPLY, unlock_delay_s=3600, unstake_delay_s=0
        )
        self.domain = Domain(self.deployment.chain_id, self.deployment.escrow)
        self.token = self.chain.contract(self.deployment.token, load_artifact(TOKEN).abi)
        self.escrow = self.chain.contract(self.deployment.escrow, load_artifact(ESCROW).abi)
        # Deterministic requester keys outside the dev accounts' range (1..10).
        self.requester_keys = [(0x5E7_0000 + i).to_bytes(32, "big") for i in range(requesters)]
        for key in self.requester_keys:
            address = Account.from_key(key).address
            # A spare base unit so the requester still holds MASK after depositing
            # (the baseline transfer goes to an existing holder).
            fund(
                self.chain,
                self.treasury_key,
                address,
                REQUESTER_ETH,
                deposit_each + 1,
                token=self.deployment.token,
            )
            deposit(self.chain, key, self.deployment.escrow, self.deployment.token, deposit_each)
        self._providers = 0

    def new_provider(self) -> str:
        """A provider address no voucher has named yet (it needs no key here)."""
        self._providers += 1
        return Account.from_key((0x9A0_0000 + self._providers).to_bytes(32, "big")).address

    def _send(self, contract: Any, fn: str, *args: Any, key: bytes, gas: int | None) -> Receipt:
        sender = Account.from_key(key).address
        tx = self.chain.transaction(
            contract, fn, *args, sender=sender, nonce=self.chain.pending_nonce(sender), gas=gas
        )
        mined = self.chain.wait_receipt(self.chain.send_transaction(tx, key), [self.escrow])
        if not mined.status:
            raise RuntimeError(f"{fn} reverted in {mined.tx_hash}")
        return mined

    def erc20_transfer_gas(self) -> int:
        """One MASK transfer from the treasury to a requester that holds MASK."""
        holder = Account.from_key(self.requester_keys[0]).address
        if int(self.chain.call(self.token, "balanceOf", holder)) == 0:
            raise RuntimeError("the baseline's recipient holds no MASK: not an existing holder")
        return self._send(
            self.token, "transfer", holder, PRICE, key=self.treasury_key, gas=None
        ).gas_used

    def settle(self, vouchers: Sequence[SignedVoucher]) -> int:
        """Gas used by one settleBatch of ``vouchers``; every one must be paid."""
        gas = _GAS_BASE_LIMIT + _GAS_PER_VOUCHER_LIMIT * len(vouchers)
        mined = self._send(
            self.escrow, "settleBatch", voucher_args(vouchers), key=self.sender_key, gas=gas
        )
        names = [e.name for e in mined.events]
        paid, skipped = names.count("VoucherSettled"), names.count("VoucherSkipped")
        if paid != len(vouchers) or skipped:
            raise RuntimeError(
                f"settleBatch paid {paid} of {len(vouchers)} vouchers ({skipped} skipped): "
                "the gas figures would not be those of a settlement"
            )
        return mined.gas_used

    def run_case(self, case: Case) -> list[dict[str, Any]]:
        """First and second settlement of ``case.channels`` fresh channels."""
        provider = self.new_provider()
        keys = self.requester_keys[: case.channels]
        records = []
        for round_no, settlement in ((1, "first"), (2, "second")):
            cumulative = round_no * case.jobs * PRICE
            vouchers = [sign_voucher(self.domain, k, provider, cumulative) for k in keys]
            gas = self.settle(vouchers)
            records.append(settle_record(case, settlement, gas))
        return records


def settle_record(case: Case, settlement: str, gas: int) -> dict[str, Any]:
    return {
        "bench": "settlement",
        "kind": "settle",
        "settlement": settlement,
        "jobs_per_channel": case.jobs,
        "channels": case.channels,
        "gas_total": gas,
        "gas_per_voucher": round(gas / case.channels),
        "gas_per_job": round(gas / (case.channels * case.jobs), 1),
    }


def target_record(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    worst = max(first["gas_per_job"], second["gas_per_job"])
    return {
        "bench": "settlement",
        "kind": "target",
        "jobs_per_channel": first["jobs_per_channel"],
        "channels": first["channels"],
        "gas_per_job_first": first["gas_per_job"],
        "gas_per_job_second": second["gas_per_job"],
        "target_gas_per_job": TARGET_GAS_PER_JOB,
        "met": worst < TARGET_GAS_PER_JOB,
    }


def measure_vouchers(n: int) -> dict[str, Any]:
    """Sign ``n`` vouchers, then verify them all, timing each loop on this core."""
    from eth_keys import KeyAPI

    domain = Domain(31337, "0x" + "5e" * 20)
    key = (0xC0FFEE).to_bytes(32, "big")
    provider = Account.from_key((0xBEEF).to_bytes(32, "big")).address
    cpu0, wall0 = time.process_time(), time.perf_counter()
    vouchers = [sign_voucher(domain, key, provider, (i + 1) * PRICE) for i in range(n)]
    cpu1, wall1 = time.process_time(), time.perf_counter()
    ok = sum(verify_voucher(domain, v) for v in vouchers)
    cpu2, wall2 = time.process_time(), time.perf_counter()
    if ok != n:
        raise RuntimeError(f"only {ok} of {n} freshly signed vouchers verified")
    return {
        "bench": "settlement",
        "kind": "vouchers",
        "vouchers": n,
        "ecc_backend": type(KeyAPI().backend).__name__,
        "signed_per_s": round(n / max(cpu1 - cpu0, 1e-9)),
        "verified_per_s": round(n / max(cpu2 - cpu1, 1e-9)),
        "sign_us": round((cpu1 - cpu0) / n * 1e6),
        "verify_us": round((cpu2 - cpu1) / n * 1e6),
        "signed_per_s_wall": round(n / max(wall1 - wall0, 1e-9)),
        "verified_per_s_wall": round(n / max(wall2 - wall1, 1e-9)),
    }


def _int_list(limit: int, what: str):
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a comma list of integers: {text!r} (e.g. 1,10,100)"
            ) from None
        if not values or any(not 1 <= v <= limit for v in values):
            raise argparse.ArgumentTypeError(f"{what} must each be 1..{limit}: {text!r}")
        return values

    return parse


def _target(text: str) -> Case:
    jobs, sep, channels = text.partition("x")
    try:
        case = Case(int(jobs), int(channels))
    except ValueError:
        case = None
    if (
        not sep
        or case is None
        or not 1 <= case.jobs <= MAX_JOBS
        or not 1 <= case.channels <= MAX_CHANNELS
    ):
        raise argparse.ArgumentTypeError(
            f"give the target as JOBSxCHANNELS, e.g. 100x50 (jobs 1..{MAX_JOBS}, "
            f"channels 1..{MAX_CHANNELS}): {text!r}"
        )
    return case


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--jobs",
        type=_int_list(MAX_JOBS, "jobs per channel"),
        default=None,
        help="jobs per channel (1,10,100)",
    )
    parser.add_argument(
        "--channels",
        type=_int_list(MAX_CHANNELS, "channels per batch"),
        default=None,
        help="vouchers per batch (1,10,100)",
    )
    parser.add_argument("--target", type=_target, default=None, help="JOBSxCHANNELS (100x50)")
    parser.add_argument("--vouchers", type=int, default=None, help="vouchers to sign/verify (2000)")
    parser.add_argument(
        "--quick", action="store_true", help="small run: jobs 1,100, channels 1,10, target 100x10"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or ([1, 100] if quick else [1, 10, 100])
    args.channels = args.channels or ([1, 10] if quick else [1, 10, 100])
    args.target = args.target or Case(100, 10 if quick else 50)
    args.vouchers = args.vouchers if args.vouchers is not None else (200 if quick else 2000)
    if not 1 <= args.vouchers <= 1_000_000:
        parser.error("--vouchers must be 1..1000000")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark, print one JSON line per measurement, return them."""
    args = parse_args(argv)
    cases = [Case(j, c) for j in args.jobs for c in args.channels]
    requesters = max([c.channels for c in cases] + [args.target.channels])
    # At most what a requester pays over the run (two settlements of every
    # case), twice over: a deposit that reached zero would earn a storage
    # refund and make the last batch look cheaper than a live channel's.
    deposit_each = 2 * 2 * PRICE * (sum(c.jobs for c in cases) + args.target.jobs)
    records: list[dict[str, Any]] = []

    def emit(record: dict[str, Any]) -> None:
        records.append(record)
        print(json.dumps(record), flush=True)

    t0 = time.perf_counter()
    bench = SettlementBench(requesters, deposit_each)
    baseline = bench.erc20_transfer_gas()
    emit({"bench": "settlement", "kind": "erc20_transfer", "gas": baseline})
    for case in cases:
        for record in bench.run_case(case):
            record["vs_erc20"] = round(record["gas_per_job"] / baseline, 4)
            emit(record)
    first, second = bench.run_case(args.target)
    emit(target_record(first, second))
    emit(measure_vouchers(args.vouchers))
    print(
        json.dumps(
            {"bench": "settlement", "kind": "run", "wall_s": round(time.perf_counter() - t0, 1)}
        ),
        file=sys.stderr,
    )
    return records


if __name__ == "__main__":
    main()
