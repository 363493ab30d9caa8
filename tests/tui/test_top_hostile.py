"""``mask top`` showing text from strangers: no markup errors, no raw escapes (Pilot)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from rich.text import Text
from textual.widgets import Static

from maskd.tui import TopApp
from maskd.tui.testing import FakeTopClient
from maskd.tui.widgets import JobsTable, KeyedTable, OffersTable, PeersTable, job_key
from protocol.errors import RpcError

NOW = 1_700_000_000.0
WAIT_S = 5
HOSTILE = "[/x] H100\x1b]0;pwned\x07\x9b31m\u202etxt"
SHOWN = "[/x] H100\\x1b]0;pwned\\x07\\x9b31m\\u202etxt"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")
PEER_ID = "12D3KooWPeer0001xyz"
OFFER_ID = "offer-0001-abcdef"
JOB_ID = "ab" * 32


def hostile_offer(offer_id: str = OFFER_ID, **extra) -> dict:
    return {
        "offer_id": offer_id,
        "peer_id": PEER_ID,
        "cpu": "[bold]4",
        "memory_mb": 8192,
        "disk_mb": 10240,
        "gpus": [{"name": HOSTILE, "memory_mb": 81920}],
        "executors": ["wasm", HOSTILE],
        "prices": {"cpu_core_hour": "2500000000000000"},
        "expires_at": NOW + 600,
        **extra,
    }


def hostile_peer() -> dict:
    return {
        "peer_id": PEER_ID,
        "addrs": ["/ip4/10.0.0.1/tcp/4001/" + HOSTILE],
        "latency_ms": 11.0,
        "score": 0.5,
        "offer": hostile_offer(),
    }


def hostile_job() -> dict:
    return {
        "job_id": JOB_ID,
        "role": "requester",
        "name": HOSTILE,
        "state": "failed",
        "provider": PEER_ID,
        "price": None,
        "usage": None,
        "error": {"code": HOSTILE},
        "created_at": NOW - 10,
    }


def shown(cell) -> str:
    """What a DataTable shows for a cell: str cells are markup, Text is as is."""
    return cell.plain if isinstance(cell, Text) else Text.from_markup(cell).plain


def all_cells(table: KeyedTable) -> list[str]:
    return [shown(cell) for key in table.keys() for cell in table.get_row(key)]


async def wait_until(pilot, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await pilot.pause()


def make_app(factory) -> TopApp:
    return TopApp(
        factory,
        socket_label="/tmp/t/maskd.sock",
        refresh_interval=3600.0,
        retry_initial=0.01,
        retry_cap=0.05,
        clock=lambda: NOW,
    )


@pytest.mark.asyncio
async def test_hostile_offers_peers_jobs_and_node_info_render_literally():
    fake = FakeTopClient(
        {"peer_id": "12D3KooWNodeSelf0000", "role": HOSTILE, "version": "[/v]\x1b[2J"},
        [hostile_peer()],
        [hostile_offer()],
        [hostile_job()],
    )
    app = make_app(fake.connect)
    async with app.run_test(size=(240, 40)) as pilot:
        await wait_until(pilot, lambda: app.loads >= 1 and fake.watching == 1)
        fake.add_offer(hostile_offer("offer-0002-[/y]\x1b[31m"))
        await wait_until(pilot, lambda: app.query_one(OffersTable).row_count == 2)
        await pilot.pause()  # one more frame: every cell has been drawn

        offers = app.query_one(OffersTable)
        gpus = shown(offers.get_cell(OFFER_ID, "gpus"))
        assert gpus == f"{SHOWN} (80 GiB)"
        assert shown(offers.get_cell(OFFER_ID, "cpu")) == "[bold]4"
        assert shown(offers.get_cell(OFFER_ID, "executors")) == f"wasm, {SHOWN}"
        peers = app.query_one(PeersTable)
        assert shown(peers.get_cell(PEER_ID, "address")) == f"/ip4/10.0.0.1/tcp/4001/{SHOWN}"
        jobs = app.query_one(JobsTable)
        assert shown(jobs.get_cell(job_key(JOB_ID, "requester"), "name")) == SHOWN
        assert shown(jobs.get_cell(job_key(JOB_ID, "requester"), "error")) == SHOWN
        header = str(app.query_one("#node", Static).render())
        assert SHOWN in header and "[/v]\\x1b[2J" in header

        for table in (offers, peers, jobs):
            for cell in all_cells(table):
                for raw in RAW:
                    assert raw not in cell
        for raw in RAW:
            assert raw not in header


@pytest.mark.asyncio
async def test_an_error_from_the_daemon_shows_in_the_banner_literally():
    async def refusing_factory():
        raise RpcError(HOSTILE, code="nope")

    app = make_app(refusing_factory)
    async with app.run_test(size=(160, 20)) as pilot:
        banner = app.query_one("#banner", Static)
        await wait_until(pilot, lambda: banner.display)
        await pilot.pause()
        text = str(banner.render())
        assert text == f"error: {SHOWN} — retrying…"
