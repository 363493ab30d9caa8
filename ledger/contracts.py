"""The compiled contracts and the constants their ABI speaks in.

``contracts/build/*.json`` are committed (``make contracts`` rebuilds them with
the pinned solc, ``make contracts-check`` proves they match the sources), so
deploying or calling the token, the escrow and ComputeRequests needs no
compiler at run time: this module only reads those files. It also mirrors what
the Solidity side encodes as bare numbers or selectors: the ``VoucherSkipped``
reasons and the contracts' custom errors, with a message and a hint for each,
so a revert can be shown to a person instead of as four bytes of hex, and a
refused zk claim, slash or fulfilment can be recorded as a snake_case reason
(:func:`refusal_reason`).

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
    "CLAIM_REFUSALS",
    "ESCROW",
    "FULFILL_REFUSALS",
    "REQUESTS",
    "REVERT_HINTS",
    "SLASH_REFUSALS",
    "STATS_CONSUMER",
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
    "refusal_reason",
    "skip_reason_name",
    "voucher_args",
]

BUILD_DIR = Path(__file__).resolve().parent.parent / "contracts" / "build"
TOKEN = "MaskToken"
ESCROW = "SettlementEscrow"
#: DApps' zk requests, deployed right after the escrow (its verifier).
REQUESTS = "ComputeRequests"
#: The example DApp (contracts/src/examples/StatsConsumer.sol).
STATS_CONSUMER = "StatsConsumer"

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
    # zk: the verifier, claimWithProof, slash (SettlementEscrow)
    "InvalidKeyIcLength": (
        "the verifying key's ic must hold 1 to 257 points (0 to 256 public signals)",
        "register the verification_key.json snarkjs wrote, converted with zkp.formats.vk_calldata",
    ),
    "InvalidKeyCoordinate": (
        "a G2 coordinate of the verifying key is not below the field prime q",
        "convert the key with zkp.formats.vk_calldata (G2 in EIP-197 order)",
    ),
    "InvalidKeyPoint": (
        "alpha1 or an ic point of the verifying key is not a point on BN254",
        "convert the key with zkp.formats.vk_calldata",
    ),
    "KeyStoreFailed": ("storing the verifying key failed", "retry with more gas"),
    "VerifierOutOfGas": (
        "the transaction ran out of gas inside the proof check",
        "send it with more gas (estimate_gas gives enough)",
    ),
    "NotZkJob": (
        "the agreement names no circuit, so no proof can pay for it",
        "only jobs agreed with a circuitId can be claimed with a proof; settle a voucher instead",
    ),
    "BadAgreementSignature": (
        "the agreement is not signed by its requester",
        "submit the agreement exactly as the requester signed it, with its signature",
    ),
    "InvalidProof": (
        "the proof does not verify for these public signals",
        "check the proof, the public signals and the circuit id (a provider whose proof fails gains nothing)",
    ),
    "BindingMismatch": (
        "the last public signal is not this job's binding",
        "the proof must be made for this job id, requester and provider (zkp.binding.job_binding)",
    ),
    "AlreadyClaimed": (
        "this provider was already paid for this job with a proof",
        "nothing to do: a job is claimed once",
    ),
    "ClaimWindowClosed": (
        "the claim window closed (30 days after the agreement's deadline)",
        "claims must be made within the window",
    ),
    "BadResultSignature": (
        "the zk result is not signed by the provider named in it",
        "slashing needs the provider's own EIP-712 ZkResult signature",
    ),
    "UnknownCircuit": (
        "the circuit is not registered on chain",
        "register its verifying key first (registerCircuit is open to anyone)",
    ),
    "NotSlashable": (
        "the signed result holds: its proof verifies and its binding matches",
        "a correct result cannot be slashed",
    ),
    "AlreadySlashed": (
        "this provider was already slashed for this job",
        "nothing to do: evidence is used once",
    ),
    "NothingToSlash": ("the provider has no stake", "nothing to take"),
    # ComputeRequests
    "ZeroPayment": ("the payment is zero", "offer a payment above 0"),
    "DeadlinePassed": ("the deadline is not in the future", "give a later deadline"),
    "PublicCountMismatch": (
        "the number of public signals does not fit the circuit",
        "outputs + inputs + 1 (the binding) must equal the circuit's public signals",
    ),
    "InputOutOfField": (
        "an input is not below the scalar field order r",
        "reduce the input modulo r (zkp.binding.SNARK_SCALAR_FIELD)",
    ),
    "CidTooLong": ("the input CID is too long", "give a CID of at most 256 bytes"),
    "TooManyInputs": ("too many inputs", "a request has at most 255 inputs"),
    "UnknownRequest": ("there is no such request", "check the request id"),
    "AlreadyFulfilled": ("the request was already fulfilled", "nothing to do"),
    "AlreadyRefunded": ("the request was refunded", "nothing to do"),
    "RequestExpired": (
        "the request's deadline passed",
        "it can no longer be fulfilled; its requester may call refund",
    ),
    "NotExpired": ("the request's deadline has not passed", "wait until after its deadline"),
    "ZeroProvider": ("the provider is the zero address", "name the provider whose proof it is"),
    "InputsMismatch": (
        "the public signals do not carry the request's inputs",
        "prove with exactly the inputs the request named, after the outputs",
    ),
    "InsufficientGasForCallback": (
        "too little gas left to give the callback its allowance",
        "send fulfill with more gas (estimate_gas gives enough)",
    ),
}


def refusal_reason(error_name: str) -> str:
    """``bad_agreement_signature`` for ``BadAgreementSignature`` and so on; ``""``
    for an empty name (a revert that decoded to nothing)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", error_name).lower()


#: Why a claimWithProof, slash or fulfill was refused, as snake_case reasons
#: (custom error name -> reason), for ledgers and gateways to record.
CLAIM_REFUSALS: Mapping[str, str] = {
    name: refusal_reason(name)
    for name in (
        "NotZkJob",
        "BadAgreementSignature",
        "InvalidProof",
        "BindingMismatch",
        "AlreadyClaimed",
        "ClaimWindowClosed",
        "InsufficientDeposit",
        "VerifierOutOfGas",
    )
}
SLASH_REFUSALS: Mapping[str, str] = {
    name: refusal_reason(name)
    for name in (
        "AlreadySlashed",
        "NothingToSlash",
        "BadResultSignature",
        "UnknownCircuit",
        "NotSlashable",
        "VerifierOutOfGas",
    )
}
FULFILL_REFUSALS: Mapping[str, str] = {
    name: refusal_reason(name)
    for name in (
        "UnknownRequest",
        "AlreadyFulfilled",
        "AlreadyRefunded",
        "RequestExpired",
        "ZeroProvider",
        "PublicCountMismatch",
        "InputsMismatch",
        "BindingMismatch",
        "InvalidProof",
        "InsufficientGasForCallback",
        "VerifierOutOfGas",
    )
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
    """The ABI and bytecode of ``name`` (``TOKEN``, ``ESCROW``, ``REQUESTS``,
    ``STATS_CONSUMER``); read once, then cached.

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
