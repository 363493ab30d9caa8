"""MASK amounts for people: ``"1.5"`` in, ``"1.5 MASK"`` out, exactly.

MASK has 18 decimals. The chain, the RPC and the ledger count base units
(integers; decimal strings on the wire); people type and read MASK. Money is
never a float here: a float cannot hold 0.1 MASK, and a rounding error in a
deposit is a bug nobody sees until it costs someone. Parsing is integer
arithmetic on the digits; formatting is ``divmod``.

What :func:`parse_amount` accepts: ``1``, ``1.5``, ``0.000000000000000001``,
an optional ``MASK`` suffix (``1.5 MASK``, as the CLI prints it), and base
units as a whole number with the suffix ``base`` (``1500base``,
``1500 base``). It refuses with an :class:`AmountError` (a ``ValueError``
carrying a ``message`` and a ``hint``; ``str()`` says both):
negatives, more than 18 decimals, anything over ``2**256 - 1`` base units,
exponents (``1e18``), hex, separators, and anything else.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "AmountError",
    "DECIMALS",
    "BASE_PER_MASK",
    "MAX_UINT256",
    "parse_amount",
    "parse_base_units",
    "format_mask",
    "format_mask_and_base",
    "format_base_units",
    "format_eth",
]

DECIMALS = 18
BASE_PER_MASK = 10**DECIMALS
MAX_UINT256 = 2**256 - 1
# Longer input is junk: uint256 has 78 digits, plus a dot, 18 decimals and a suffix.
_MAX_INPUT_CHARS = 128

# [0-9], not \d: \d also matches other scripts' digits, which int() would accept.
_MASK = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<frac>[0-9]*))?(?:\s*mask)?", re.IGNORECASE)
_BASE = re.compile(r"(?P<base>[0-9]+)\s*base", re.IGNORECASE)
_EXAMPLES = 'e.g. "1.5" (MASK) or "1500base" (base units; 1 MASK = 10^18 base units)'


class AmountError(ValueError):
    """An amount a person typed that is not one: what is wrong, and what to type."""

    def __init__(self, message: str, hint: str = _EXAMPLES) -> None:
        super().__init__(f"{message}; {hint}")
        self.message = message
        self.hint = hint


def parse_amount(text: str) -> int:
    """A human amount as base units: ``"1.5"`` → ``1500000000000000000``.

    Zero is a valid amount here; commands that need more say so themselves.
    """
    if not isinstance(text, str):
        raise AmountError(f"an amount is text, not {type(text).__name__}")
    raw = text.strip()
    shown = raw if len(raw) <= 40 else raw[:39] + "…"
    if not raw:
        raise AmountError("no amount given")
    if len(raw) > _MAX_INPUT_CHARS:
        raise AmountError(f"{shown!r} is too long to be an amount")
    if raw.startswith("-"):
        raise AmountError(f"{shown!r} is negative: amounts are 0 or more")
    if m := _BASE.fullmatch(raw):
        base = int(m["base"])
    elif m := _MASK.fullmatch(raw):
        frac = m["frac"] or ""
        if len(frac) > DECIMALS:
            raise AmountError(
                f"{shown!r} has {len(frac)} decimals; MASK has {DECIMALS}",
                f"the smallest amount is 0.{'0' * (DECIMALS - 1)}1 MASK, or 1base",
            )
        base = int(m["whole"]) * BASE_PER_MASK + int(frac.ljust(DECIMALS, "0") or "0")
    elif re.fullmatch(r"[0-9]*\.[0-9]+\s*base", raw, re.IGNORECASE):
        raise AmountError(
            f"{shown!r}: base units are whole numbers",
            "drop the fraction, or drop `base` to give MASK",
        )
    elif re.fullmatch(r"\.[0-9]+(\s*mask)?", raw, re.IGNORECASE):
        raise AmountError(f"{shown!r} has no digit before the dot", f"write 0{raw}")
    else:
        raise AmountError(f"{shown!r} is not an amount")
    if base > MAX_UINT256:
        raise AmountError(f"{shown!r} is more than the chain can count (2^256 - 1 base units)")
    return base


def parse_base_units(value: Any) -> int:
    """An amount from the daemon (a decimal string of base units, or an int).

    The daemon may be older or newer than this client, and the amount may
    have come from a peer: anything that is not a whole number in
    ``0 .. 2**256 - 1`` is a ``ValueError``, which callers show as "—".
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not an amount")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 78 and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise ValueError(f"not a base-unit amount: {str(value)[:40]!r}")
    if not 0 <= number <= MAX_UINT256:
        raise ValueError(f"base-unit amount out of range: {str(value)[:40]!r}")
    return number


def _mask_digits(base: int) -> str:
    whole, frac = divmod(base, BASE_PER_MASK)
    if not frac:
        return str(whole)
    return f"{whole}.{str(frac).rjust(DECIMALS, '0').rstrip('0')}"


def format_mask(base: int) -> str:
    """``1500000000000000000`` → ``"1.5 MASK"``: every digit kept, no trailing zeros."""
    if isinstance(base, bool) or not isinstance(base, int) or base < 0:
        raise ValueError(f"not a base-unit amount: {base!r}")
    return f"{_mask_digits(base)} MASK"


def format_eth(wei: int) -> str:
    """Gas money, also 18 decimals: ``10**17`` wei → ``"0.1 ETH"``."""
    if isinstance(wei, bool) or not isinstance(wei, int) or wei < 0:
        raise ValueError(f"not a wei amount: {wei!r}")
    return f"{_mask_digits(wei)} ETH"


def format_base_units(base: int) -> str:
    """``1500`` → ``"1500 base units"`` (``"1 base unit"``)."""
    if isinstance(base, bool) or not isinstance(base, int) or base < 0:
        raise ValueError(f"not a base-unit amount: {base!r}")
    return f"{base} base unit" + ("" if base == 1 else "s")


def format_mask_and_base(base: int) -> str:
    """``"1.5 MASK (1500000000000000000 base units)"``: for money that moves."""
    return f"{format_mask(base)} ({format_base_units(base)})"
