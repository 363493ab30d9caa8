"""The compiled contracts and the constants their ABI speaks in.

``contracts/build/*.json`` are committed (``make contracts`` rebuilds them with
the pinned solc, ``make contracts-check`` proves they match the sources), so
deploying or calling the token and the escrow needs no compiler at run time:
this module only reads those files. It also mirrors what the Solidity side
encodes as bare numbers or selectors: the ``VoucherSkipped`` reasons and the
escrow's custom errors, with a message and a hint for each, so a revert can be
shown to a person instead of as four bytes of hex.

Pure: file reads and ABI decoding, no chain access.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector

from ledger.vouchers import SignedVoucher
from protocol.errors import MaskError

__all__ = [
    "BUILD_DIR",
    "ESCROW",
    "REVERT_HINTS",
    "SKIP_BAD_SIGNATURE",
    "SKIP_INSUFFICIENT_DEPOSIT",
    "SKIP_NOT_INCREASE",
    "SKIP_REASONS",
    "SKIP_ZERO_ADDRESS",
    "TOKEN",
    "Artifact",
    "ContractArtifactError",
    "Revert",
    "decode_revert",
    "load_artifact",
    "skip_reason_name",
    "voucher_args",
]

BUILD_DIR = Path(__file__).resolve().parent.parent / "contracts" / "build"
TOKEN = "MaskToken"
ESCROW = "SettlementEscrow"

# VoucherSkipped(requester, provider, cumulative, reason): contracts/src/SettlementEscrow.sol.
SKIP_BAD_SIGNATURE = 1  # not the requester's signature: wrong signer, high s, v not 27/28, length
SKIP_NOT_INCREASE = 2  # cumulative <= settled: already paid (a resend) or an older voucher
SKIP_INSUFFICIENT_DEPOSIT = 3  # deposit < increase: nothing paid, the voucher stays valid
SKIP_ZERO_ADDRESS = 4  # requester or provider is the zero address

SKIP_REASONS: Mapping[int, str] = {
    SKIP_BAD_SIGNATURE: "bad_signature",
    SKIP_NOT_INCREASE: "not_increase",
    SKIP_INSUFFICIENT_DEPOSIT: "insufficient_deposit",
    SKIP_ZERO_ADDRESS: "zero_address",
}

# The escrow's custom errors: what each means for the person who sent the call.
REVERT_HINTS: Mapping[str, tuple[str, str]] = {
    "ZeroAmount": ("the amount is zero", "give an amount above 0"),
    "InsufficientDeposit": (
        "the escrow deposit is smaller than the amount asked for",
        "check `available` and ask for at most the deposit",
    ),
    "NoUnlockPending": ("there is no unlock request", "request one with requestUnlock first"),
    "UnlockNotDue": (
        "the unlock request is not due yet",
        "wait until unlockAt (the unlock delay lets providers settle first)",
    ),
    "NothingToWithdraw": ("there are no earnings to withdraw", "settle vouchers first"),
    "InsufficientStake": (
        "the stake is smaller than the amount asked for",
        "ask for at most the stake",
    ),
    "NoUnstakePending": ("there is no unstake request", "request one with requestUnstake first"),
    "UnstakeNotDue": ("the unstake request is not due yet", "wait until its time `at`"),
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ContractArtifactError(MaskError):
    code = "contract_artifact_invalid"


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract, as ``contracts/build.js`` wrote it."""

    abi: tuple[dict[str, Any], ...]
    bytecode: str  # 0x hex, the creation code (constructor arguments are appended)
    deployed_bytecode: str = "0x"
    contract_name: str = ""
    solc: str = ""


@functools.cache
def _load(name: str, build_dir: Path) -> Artifact:
    path = build_dir / f"{name}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractArtifactError(
            f"no compiled contract {name!r} at {path}",
            hint="run `make contracts` (needs Node.js 20 and npm)",
        ) from None
    except (OSError, ValueError) as err:
        raise ContractArtifactError(
            f"cannot read the compiled contract {path}: {err}",
            hint="run `make contracts` to rebuild it",
        ) from err
    try:
        abi, bytecode = raw["abi"], raw["bytecode"]
        if not isinstance(abi, list) or not all(isinstance(e, dict) for e in abi):
            raise TypeError("abi is not a list of objects")
        if not isinstance(bytecode, str) or not re.fullmatch(r"0x(?:[0-9a-f]{2})+", bytecode):
            raise TypeError("bytecode is not 0x hex")
        return Artifact(
            abi=tuple(abi),
            bytecode=bytecode,
            deployed_bytecode=str(raw.get("deployedBytecode", "0x")),
            contract_name=str(raw.get("contractName", name)),
            solc=str(raw.get("solc", "")),
        )
    except (KeyError, TypeError) as err:
        raise ContractArtifactError(
            f"{path} is not a contract artifact: {err}",
            hint="run `make contracts` to rebuild it",
        ) from err


def load_artifact(name: str, build_dir: Path | None = None) -> Artifact:
    """The ABI and bytecode of ``name`` (``TOKEN`` or ``ESCROW``); read once, then cached.

    Raises ContractArtifactError with a hint when the file is missing or malformed.
    """
    if not _NAME.match(name):
        raise ContractArtifactError(f"not a contract name: {name[:64]!r}")
    return _load(name, (build_dir or BUILD_DIR).resolve())


def skip_reason_name(reason: int) -> str:
    """``bad_signature`` etc. for a VoucherSkipped reason; ``unknown_<n>`` otherwise."""
    return SKIP_REASONS.get(reason, f"unknown_{reason}")


def voucher_args(vouchers: Iterable[SignedVoucher]) -> list[tuple[str, str, int, bytes]]:
    """``settleBatch``'s argument: SignedVoucher{requester, provider, cumulative, signature}[]."""
    return [(v.requester, v.provider, v.cumulative, bytes(v.signature)) for v in vouchers]


@dataclass(frozen=True, slots=True)
class Revert:
    """A decoded custom error: its name, its arguments by name, and words for people."""

    name: str
    args: Mapping[str, Any]
    message: str
    hint: str


def _error_table(abi: Sequence[Mapping[str, Any]]) -> dict[bytes, Mapping[str, Any]]:
    table = {}
    for entry in abi:
        if entry.get("type") == "error":
            types = ",".join(i["type"] for i in entry.get("inputs", ()))
            table[function_signature_to_4byte_selector(f"{entry['name']}({types})")] = entry
    return table


def decode_revert(abi: Sequence[Mapping[str, Any]], data: bytes | str | None) -> Revert | None:
    """Decodes revert data (bytes or 0x hex) against the custom errors in ``abi``.

    None when the data is not one of them (a plain revert, a panic, garbage).
    """
    if isinstance(data, str):
        try:
            data = bytes.fromhex(data.removeprefix("0x"))
        except ValueError:
            return None
    if not data or len(data) < 4:
        return None
    entry = _error_table(abi).get(bytes(data[:4]))
    if entry is None:
        return None
    inputs = entry.get("inputs", ())
    try:
        values = abi_decode([i["type"] for i in inputs], bytes(data[4:]))
    except Exception:  # eth_abi raises several types for malformed data
        return None
    args = {i["name"]: v for i, v in zip(inputs, values, strict=True)}
    message, hint = REVERT_HINTS.get(entry["name"], (entry["name"], ""))
    if args:
        message += " (" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"
    return Revert(entry["name"], args, message, hint)
