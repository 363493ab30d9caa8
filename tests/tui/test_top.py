"""``mask top`` with Pilot against FakeTopClient (asyncio; see conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from textual.widgets import Static

from maskd import render
from maskd.tui import TopApp
from maskd.tui.testing import FakeTopClient
from maskd.tui.widgets import JobsTable, OffersTable, PeersTable, job_key, job_row

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


def job(n: int, **extra) -> dict:
    return {
        "job_id": f"{n:04d}" + "ab" * 30,
        "role": "requester",
        "name": f"job-{n}",
        "state": "pending",
        "provider": None,
        "provider_account": None,
        "price": None,
        "usage": None,
        "output_cid": None,
        "error": None,
        "created_at": NOW - 1000 + n,  # higher n: newer
        "updated_at": NOW - 1000 + n,
        **extra,
    }


def key(j: dict) -> str:
    return job_key(j["job_id"], j["role"])


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


def jobs_table(app) -> JobsTable:
    return app.query_one(JobsTable)


def job_cells(app, j: dict) -> list[str]:
    return [str(cell) for cell in jobs_table(app).get_row(key(j))]


def state_style(app, j: dict) -> str:
    return str(jobs_table(app).get_cell(key(j), "state").style)


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


# -- jobs --

RUNNING = job(
    2,
    state="completed",
    provider="12D3KooWProv0002xyz",
    provider_account="0x" + "2" * 40,
    price="1500000000000000000",
    usage={"fuel": 10, "wall_ms": 1234, "peak_memory_bytes": 1, "output_bytes": 2},
    output_cid="bafyout",
)


@pytest.fixture
def jobs_fake() -> FakeTopClient:
    return FakeTopClient(
        NODE,
        [peer(1)],
        [offer(1)],
        [
            job(1, state="failed", error={"code": "nonzero_exit", "message": "exit 1"}),
            RUNNING,
            job(3, state="running", role="provider", provider="12D3KooWNodeSelf0000"),
        ],
        socket_path="/tmp/t/maskd.sock",
    )


def test_job_row_formats_price_wall_time_and_error():
    cells = {k: str(v) for k, v in job_row(RUNNING).items()}
    assert cells == {
        "job": "0002abab…abab",
        "role": "requester",
        "name": "job-2",
        "state": "completed",
        "provider": "12D3KooW…2xyz",
        "price": "1.5",
        "wall": "1.2 s",
        "error": render.DASH,
    }
    sparse = {k: str(v) for k, v in job_row({"job_id": "j", "state": "weird"}).items()}
    assert sparse["price"] == sparse["wall"] == sparse["error"] == sparse["provider"] == render.DASH
    assert str(job_row({"name": "[/oops]"})["name"]) == "[/oops]"  # shown, never markup
    assert [render.format_wall_ms(ms) for ms in (0, 999, 59_999, 125_000, None, -1)] == [
        "0 ms",
        "999 ms",
        "60.0 s",
        "2m 5s",
        render.DASH,
        render.DASH,
    ]
    assert render.job_state_style("verifying") == "yellow"
    assert render.job_state_style("cancelled") == "red"
    assert render.job_state_style("pending") == ""


@pytest.mark.asyncio
async def test_jobs_table_is_filled_at_start_newest_first(jobs_fake):
    app = make_app(jobs_fake)
    async with app.run_test(size=(160, 50)) as pilot:
        await started(pilot, jobs_fake)
        j1, j3 = job(1), job(3, role="provider")
        assert jobs_table(app).display
        assert jobs_table(app).keys() == [key(j3), key(RUNNING), key(j1)]
        assert jobs_table(app).border_title == "3 jobs"
        assert job_cells(app, RUNNING) == [
            "0002abab…abab",
            "requester",
            "job-2",
            "completed",
            "12D3KooW…2xyz",
            "1.5",
            "1.2 s",
            render.DASH,
        ]
        assert job_cells(app, j1)[3] == "failed" and job_cells(app, j1)[-1] == "nonzero_exit"
        assert job_cells(app, j3)[1:4] == ["provider", "job-3", "running"]
        assert state_style(app, RUNNING) == "green"
        assert state_style(app, j1) == "red"
        assert state_style(app, j3) == "yellow"
        assert jobs_fake.job_calls == 1


@pytest.mark.asyncio
async def test_job_state_event_updates_the_row_in_place(jobs_fake):
    app = make_app(jobs_fake)
    async with app.run_test(size=(160, 50)) as pilot:
        await started(pilot, jobs_fake)
        j3 = job(3, role="provider")
        order = jobs_table(app).keys()
        jobs_fake.update_job(j3["job_id"], "provider", state="verifying", updated_at=NOW)
        await wait_until(pilot, lambda: job_cells(app, j3)[3] == "verifying")
        assert state_style(app, j3) == "yellow"
        jobs_fake.update_job(j3["job_id"], "provider", state="cancelled", updated_at=NOW + 1)
        await wait_until(pilot, lambda: job_cells(app, j3)[3] == "cancelled")
        assert state_style(app, j3) == "red"
        assert jobs_table(app).keys() == order  # same rows, same places
        assert jobs_fake.job_calls == 1  # known job: no reload
        # the same job id in the other role is another row, and unknown here
        assert key(job(3)) not in jobs_table(app).keys()


@pytest.mark.asyncio
async def test_unknown_jobs_event_reloads_once_for_a_burst(jobs_fake):
    app = make_app(jobs_fake)  # refresh interval of an hour: only the event can reload
    async with app.run_test(size=(160, 50)) as pilot:
        await started(pilot, jobs_fake)
        table = jobs_table(app)
        table.move_cursor(row=table.get_row_index(key(RUNNING)))
        for n in range(4, 9):  # a burst of new jobs, each announced by job.state
            jobs_fake.add_job(job(n))
        await wait_until(pilot, lambda: table.row_count == 8)
        for _ in range(5):
            await pilot.pause()
        assert jobs_fake.job_calls == 2  # the start, and one reload for the whole burst
        assert table.keys()[:5] == [key(job(n)) for n in range(8, 3, -1)]  # newest on top
        assert table.border_title == "8 jobs"
        # the cursor stayed on the job it was on, though rows went in above it
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == key(RUNNING)
        # debounced: another unknown job within the interval waits for a refresh
        jobs_fake.add_job(job(9))
        for _ in range(5):
            await pilot.pause()
        assert jobs_fake.job_calls == 2 and table.row_count == 8


@pytest.mark.asyncio
async def test_periodic_refresh_reconciles_jobs(jobs_fake):
    app = make_app(jobs_fake, refresh_interval=0.02)
    async with app.run_test(size=(160, 50)) as pilot:
        await started(pilot, jobs_fake)
        j3 = job(3, role="provider")
        # changes the daemon made without an event reaching us
        jobs_fake.update_job(
            j3["job_id"], "provider", event=False, state="completed", usage={"wall_ms": 420}
        )
        jobs_fake.job_state.pop((job(1)["job_id"], "requester"))
        await wait_until(pilot, lambda: job_cells(app, j3)[3] == "completed")
        assert job_cells(app, j3)[6] == "420 ms"
        await wait_until(pilot, lambda: jobs_table(app).keys() == [key(j3), key(RUNNING)])


@pytest.mark.asyncio
async def test_daemon_without_jobs_hides_the_jobs_table():
    old = FakeTopClient(NODE, [peer(1)], [offer(1)], jobs=None)
    app = make_app(old, refresh_interval=0.02)
    async with app.run_test(size=(160, 40)) as pilot:
        await started(pilot, old)
        assert not jobs_table(app).display
        assert not app.jobs_supported
        assert not banner(app).display
        assert peers_table(app).row_count == 1 and offers_table(app).row_count == 1
        await wait_until(pilot, lambda: app.loads >= 3)  # refreshes go on, without jobs
        assert old.job_calls == 1
        old.push_event(
            {"type": "job.state", "job_id": "x", "role": "requester", "state": "running"}
        )
        old.add_peer(peer(2))
        await wait_until(pilot, lambda: peers_table(app).row_count == 2)
        assert old.job_calls == 1 and not jobs_table(app).display

        # the daemon is upgraded: the next connection asks again and shows jobs
        old.disconnect()
        await wait_until(pilot, lambda: banner(app).display)
        old.supports_jobs = True
        old.job_state[(job(1)["job_id"], "requester")] = job(1)
        old.reconnect()
        await wait_until(pilot, lambda: jobs_table(app).display and jobs_table(app).row_count == 1)
        assert app.jobs_supported
