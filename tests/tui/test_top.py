"""``mask top`` with Pilot against FakeTopClient (asyncio; see conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from textual.widgets import Static

from maskd.tui import TopApp
from maskd.tui.testing import FakeTopClient
from maskd.tui.widgets import OffersTable, PeersTable

NOW = 1_700_000_000.0
WAIT_S = 5
NODE = {"peer_id": "12D3KooWNodeSelf0000", "uptime_s": 3725.0, "role": "both", "version": "0.1.0"}


def peer(n: int, **extra) -> dict:
    return {
        "peer_id": f"12D3KooWPeer{n:04d}xyz",
        "addrs": [f"/ip4/10.0.0.{n}/tcp/4001"],
        "latency_ms": 10.0 + n,
        "score": 0.5,
        "offer": None,
        **extra,
    }


def offer(n: int, **extra) -> dict:
    return {
        "offer_id": f"offer-{n:04d}-abcdef",
        "peer_id": f"12D3KooWPeer{n:04d}xyz",
        "account": "0x" + "1" * 40,
        "cpu": 4,
        "memory_mb": 8192,
        "disk_mb": 10240,
        "gpus": [],
        "executors": ["wasm"],
        "prices": {"cpu_core_hour": "2500000000000000"},
        "expires_at": NOW + 600,
        **extra,
    }


def make_app(fake: FakeTopClient, *, refresh_interval: float = 3600.0) -> TopApp:
    # A long refresh interval, so row changes in these tests come from events.
    return TopApp(
        fake.connect,
        socket_label=fake.socket_path,
        refresh_interval=refresh_interval,
        retry_initial=0.01,
        retry_cap=0.05,
        clock=lambda: NOW,
    )


async def wait_until(pilot, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await pilot.pause()


def peers_table(app) -> PeersTable:
    return app.query_one(PeersTable)


def offers_table(app) -> OffersTable:
    return app.query_one(OffersTable)


def banner(app) -> Static:
    return app.query_one("#banner", Static)


async def started(pilot, fake: FakeTopClient) -> None:
    """Loaded and subscribed: events pushed from now on reach the app."""
    await wait_until(pilot, lambda: pilot.app.loads >= 1 and fake.watching == 1)


@pytest.fixture
def fake() -> FakeTopClient:
    return FakeTopClient(
        NODE, [peer(1, offer=offer(1)), peer(2)], [offer(1)], socket_path="/tmp/t/maskd.sock"
    )


@pytest.mark.asyncio
async def test_initial_state_fills_header_and_tables(fake):
    app = make_app(fake)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot, fake)
        assert peers_table(app).keys() == [peer(1)["peer_id"], peer(2)["peer_id"]]
        assert peers_table(app).get_row(peer(1)["peer_id"]) == [
            "12D3KooW…1xyz",
            "/ip4/10.0.0.1/tcp/4001",
            "11.0 ms",
            "0.50",
            "4 cpu · 8 GiB · 0 gpu",
        ]
        assert offers_table(app).keys() == [offer(1)["offer_id"]]
        row = offers_table(app).get_row(offer(1)["offer_id"])
        assert row[:5] == ["offer-…cdef", "12D3KooW…1xyz", "4", "8 GiB", "10 GiB"]
        assert row[-2:] == ["0.0025", "10m 0s"]
        header = str(app.query_one("#node", Static).render())
        assert "12D3KooWNodeSelf0000" in header
        assert "2 peers" in header and "up 1h 2m" in header
        assert not banner(app).display


@pytest.mark.asyncio
async def test_offer_added_event_adds_a_row_and_updated_changes_it(fake):
    app = make_app(fake)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot, fake)
        fake.add_offer(offer(2, cpu=16))
        await wait_until(pilot, lambda: offer(2)["offer_id"] in offers_table(app).keys())
        assert offers_table(app).get_row(offer(2)["offer_id"])[2] == "16"
        assert offers_table(app).border_title == "2 offers"
        fake.add_offer(offer(2, cpu=32))  # offer.updated: in place, no new row
        await wait_until(pilot, lambda: offers_table(app).get_row(offer(2)["offer_id"])[2] == "32")
        assert offers_table(app).row_count == 2
        fake.remove_offer(offer(1)["offer_id"], kind="offer.expired")
        await wait_until(pilot, lambda: offers_table(app).keys() == [offer(2)["offer_id"]])


@pytest.mark.asyncio
async def test_peer_left_removes_its_row_and_joined_adds_one(fake):
    app = make_app(fake)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot, fake)
        fake.remove_peer(peer(1)["peer_id"])
        await wait_until(pilot, lambda: peers_table(app).keys() == [peer(2)["peer_id"]])
        assert peers_table(app).border_title == "1 peer"
        fake.add_peer(peer(3))
        await wait_until(pilot, lambda: peer(3)["peer_id"] in peers_table(app).keys())
        assert peers_table(app).border_title == "2 peers"


@pytest.mark.asyncio
async def test_unknown_events_are_ignored_and_node_info_event_updates_header(fake):
    app = make_app(fake)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot, fake)
        fake.push_event({"type": "job.started", "job_id": "j-1"})
        fake.push_event({"type": "peer.joined"})  # no peer id: nothing to show
        fake.push_event({"type": "node.info", "node": {**NODE, "peers": 7, "uptime_s": 90061}})
        header = app.query_one("#node", Static)
        await wait_until(pilot, lambda: "7 peers" in str(header.render()))
        assert "up 1d 1h" in str(header.render())
        assert peers_table(app).row_count == 2
        assert fake.watching == 1  # still following the same stream


@pytest.mark.asyncio
async def test_disconnect_shows_banner_and_reconnect_reloads(fake):
    app = make_app(fake)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot, fake)
        fake.disconnect()
        await wait_until(pilot, lambda: banner(app).display)
        assert str(banner(app).render()) == (
            "daemon not reachable at /tmp/t/maskd.sock — retrying…"
        )
        # while it is down the world moves on, with nobody watching
        fake.peer_state.pop(peer(2)["peer_id"])
        fake.peer_state[peer(5)["peer_id"]] = peer(5)
        fake.offer_state.clear()
        fake.reconnect()
        await wait_until(pilot, lambda: not banner(app).display)
        assert app.loads == 2 and fake.connects == 2
        assert peers_table(app).keys() == [peer(1)["peer_id"], peer(5)["peer_id"]]
        assert offers_table(app).row_count == 0
        await wait_until(pilot, lambda: fake.watching == 1)
        fake.add_peer(peer(6))  # and live events flow again
        await wait_until(pilot, lambda: peer(6)["peer_id"] in peers_table(app).keys())


@pytest.mark.asyncio
async def test_daemon_down_at_start_shows_banner_until_it_comes_up(fake):
    fake.up = False
    app = make_app(fake)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: banner(app).display)
        assert "daemon not reachable at /tmp/t/maskd.sock" in str(banner(app).render())
        assert peers_table(app).row_count == 0
        fake.reconnect()
        await started(pilot, fake)
        assert not banner(app).display
        assert peers_table(app).row_count == 2


@pytest.mark.asyncio
async def test_periodic_refresh_updates_cells_in_place(fake):
    app = make_app(fake, refresh_interval=0.02)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot, fake)
        fake.peer_state[peer(2)["peer_id"]]["latency_ms"] = 250.0  # changes without an event
        await wait_until(pilot, lambda: peers_table(app).get_row(peer(2)["peer_id"])[2] == "250 ms")
        assert peers_table(app).keys() == [peer(1)["peer_id"], peer(2)["peer_id"]]


@pytest.mark.asyncio
async def test_q_quits(fake):
    app = make_app(fake)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot, fake)
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running)
    assert app.return_code == 0
