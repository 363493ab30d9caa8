"""maskd.amounts: human MASK amounts <-> base units, exact, with hints for junk."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maskd.amounts import (
    BASE_PER_MASK,
    MAX_UINT256,
    format_base_units,
    format_eth,
    format_mask,
    format_mask_and_base,
    parse_amount,
    parse_base_units,
)

uint256 = st.integers(min_value=0, max_value=MAX_UINT256)


@given(uint256)
def test_format_then_parse_is_the_identity(base):
    assert parse_amount(format_mask(base)) == base
    assert parse_amount(format_mask(base).removesuffix(" MASK")) == base
    assert parse_amount(f"{base}base") == base


@given(st.integers(min_value=0, max_value=10**40), st.integers(0, 10**18 - 1))
def test_parse_is_exact_decimal_arithmetic(whole, frac):
    text = f"{whole}.{frac:018d}"
    assert parse_amount(text) == whole * BASE_PER_MASK + frac
    assert format_mask(parse_amount(text)) == f"{text.rstrip('0').rstrip('.')} MASK"


@given(uint256)
def test_wire_amounts_round_trip(base):
    assert parse_base_units(str(base)) == base


@pytest.mark.parametrize(
    ("text", "base"),
    [
        ("1.5", 1_500_000_000_000_000_000),
        ("1", BASE_PER_MASK),
        ("0", 0),
        ("0.000000000000000001", 1),
        ("1500base", 1500),
        ("1500 base", 1500),
        ("  2.25 MASK ", 2_250_000_000_000_000_000),
        ("3mask", 3 * BASE_PER_MASK),
        ("1.", BASE_PER_MASK),
        ("007.10", 7_100_000_000_000_000_000),
        (f"{MAX_UINT256}base", MAX_UINT256),
    ],
)
def test_accepted_forms(text, base):
    assert parse_amount(text) == base


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("-1", "negative"),
        ("-0.5", "negative"),
        ("0.0000000000000000001", "19 decimals"),
        (f"{MAX_UINT256 + 1}base", "2^256 - 1"),
        (str(MAX_UINT256 // BASE_PER_MASK + 1), "2^256 - 1"),
        ("1e18", "not an amount"),
        ("1.5e18wei", "not an amount"),
        ("0x10", "not an amount"),
        ("1,000", "not an amount"),
        ("1_000", "not an amount"),
        ("+1", "not an amount"),
        ("nan", "not an amount"),
        ("inf", "not an amount"),
        ("", "no amount"),
        ("   ", "no amount"),
        ("1.5base", "whole numbers"),
        (".5", "0.5"),
        ("١٢", "not an amount"),  # Arabic-Indic digits: int() would take them
        ("9" * 500, "too long"),
        ("1.5 ETH", "not an amount"),
    ],
)
def test_rejects_with_a_hint(text, says):
    with pytest.raises(ValueError) as exc:
        parse_amount(text)
    assert says in str(exc.value)
    assert len(str(exc.value)) < 300


def test_non_text_is_rejected():
    with pytest.raises(ValueError):
        parse_amount(1.5)  # type: ignore[arg-type]


def test_formats():
    assert format_mask(1_500_000_000_000_000_000) == "1.5 MASK"
    assert format_mask(0) == "0 MASK"
    assert format_mask(1) == "0.000000000000000001 MASK"
    assert format_mask(10**21) == "1000 MASK"
    assert (
        format_mask_and_base(1_500_000_000_000_000_000)
        == "1.5 MASK (1500000000000000000 base units)"
    )
    assert format_base_units(1) == "1 base unit"
    assert format_eth(10**17) == "0.1 ETH"
    for bad in (-1, True, 1.5, "1"):
        with pytest.raises(ValueError):
            format_mask(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["", "-1", "1.5", "0x10", " 1", "١", str(MAX_UINT256 + 1), None, True, 1.0, -1, [1]]
)
def test_wire_amounts_that_are_not_amounts(value):
    with pytest.raises(ValueError):
        parse_base_units(value)
