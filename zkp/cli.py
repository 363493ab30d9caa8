"""``python -m zkp``: check a Groth16 proof from snarkjs's three JSON files.

    python -m zkp verify --vk verification_key.json --proof proof.json \
        --public public.json [--backend native|py_ecc] [--json]

prints ``valid`` (exit 0) or ``invalid: <reason>`` (exit 1); a file that is
missing, unreadable, not JSON or over 1 MiB exits 2, as do usage errors. Only
argparse and json are imported up front; the backends load when used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main"]

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2

_HINT = (
    "hint: python -m zkp verify --vk verification_key.json --proof proof.json --public public.json"
)


class _Parser(argparse.ArgumentParser):
    """argparse with the example command line after every usage error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNREADABLE, f"{self.prog}: error: {message}\n{_HINT}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m zkp",
        description="Groth16 (BN254) proofs in snarkjs's JSON formats.",
        epilog=_HINT,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    verify = sub.add_parser(
        "verify",
        help="check a proof against a verification key and public signals",
        description="Prints 'valid' (exit 0) or 'invalid: <reason>' (exit 1); "
        "exit 2 when a file cannot be read or is not JSON.",
        epilog=_HINT,
    )
    verify.add_argument("--vk", required=True, metavar="VK.json", help="verification_key.json")
    verify.add_argument("--proof", required=True, metavar="PROOF.json", help="proof.json")
    verify.add_argument("--public", required=True, metavar="PUBLIC.json", help="public.json")
    verify.add_argument(
        "--backend",
        choices=("native", "py_ecc"),
        help="pairing backend (default: native when zksnake is installed, else py_ecc)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


def _verify(args: argparse.Namespace) -> int:
    from zkp.formats import ZkFormatError, load_json_file
    from zkp.verify import default_backend, verify_json

    loaded = []
    for label, path in (("--vk", args.vk), ("--proof", args.proof), ("--public", args.public)):
        try:
            loaded.append(load_json_file(path))
        except OSError as e:
            reason = e.strerror or type(e).__name__
            print(f"error: cannot read {label} {path}: {reason}", file=sys.stderr)
            print(
                "hint: check the path; snarkjs writes these files next to each other",
                file=sys.stderr,
            )
            return EXIT_UNREADABLE
        except ZkFormatError as e:
            print(f"error: {label}: {e.reason}", file=sys.stderr)
            print("hint: pass the JSON files snarkjs wrote (at most 1 MiB each)", file=sys.stderr)
            return EXIT_UNREADABLE
    backend = args.backend or default_backend()
    try:
        verdict = verify_json(*loaded, backend=backend)
    except ValueError as e:  # the backend is not installed
        print(f"error: {e}", file=sys.stderr)
        print("hint: --backend py_ecc always works (slowly)", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        print(json.dumps({"valid": verdict.valid, "reason": verdict.reason, "backend": backend}))
    else:
        print(verdict)
    return EXIT_VALID if verdict.valid else EXIT_INVALID


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"error: name a command\n{_HINT}", file=sys.stderr)
        return EXIT_UNREADABLE
    return _verify(args)
