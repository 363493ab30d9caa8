"""The pure formatters shared by ``mask`` tables and ``mask top``."""

import pytest

from maskd import render


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.9, "42s"), (303, "5m 3s"), (3725, "1h 2m"), (90061, "1d 1h"), (-5, "0s")],
)
def test_format_duration_keeps_two_units(seconds, text):
    assert render.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("mb", "text"),
    [(512, "512 MiB"), (8192, "8 GiB"), (1536, "1.5 GiB"), (2 * 1024 * 1024, "2 TiB")],
)
def test_format_mb(mb, text):
    assert render.format_mb(mb) == text


@pytest.mark.parametrize(
    ("units", "text"),
    [("2500000000000000", "0.0025"), ("1000000000000000000", "1"), ("0", "0"), ("x", "—")],
)
def test_format_price_in_whole_mask(units, text):
    assert render.format_price(units) == text


def test_addresses_show_the_first_and_a_count():
    assert render.first_addr(["/ip4/1.2.3.4/tcp/1", "/ip6/::1/tcp/1", "/dns/x"]) == (
        "/ip4/1.2.3.4/tcp/1 +2"
    )
    assert render.first_addr([]) == "—"


def test_missing_or_odd_values_print_a_dash():
    for formatter in (
        render.format_mb,
        render.format_duration,
        render.format_latency,
        render.format_score,
    ):
        assert formatter(None) == "—"
        assert formatter("12") == "—"
        assert formatter(True) == "—"
    assert render.format_expires_in(None, now=0) == "—"
    assert render.offer_summary(None) == "—"
    assert render.gpus_summary([]) == "—"


def test_summaries():
    gpus = [{"name": "A100", "memory_mb": 81920}] * 2 + [{"name": "T4", "memory_mb": 16384}]
    assert render.gpus_summary(gpus) == "2× A100 (80 GiB), T4 (16 GiB)"
    offer = {"cpu": 4, "memory_mb": 8192, "gpus": gpus}
    assert render.offer_summary(offer) == "4 cpu · 8 GiB · 3 gpu"
    assert render.format_expires_in(100.0, now=200.0) == "expired"
    assert render.short_id("12D3KooWabcdefghijklmnop") == "12D3KooW…mnop"
    assert render.short_id("short") == "short"
