"""`mask status|peers|offers` and `mask top` against real maskd processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from textual.widgets import Static

from maskd.tui import TopApp, socket_client_factory
from maskd.tui.widgets import OffersTable, PeersTable

STATUS_KEYS = {"peer_id", "addrs", "account", "version", "peers", "uptime_s", "drops"}
PEER_KEYS = {"peer_id", "addrs", "latency_ms", "score"}
OFFER_KEYS = {
    "offer_id",
    "peer_id",
    "account",
    "cpu",
    "memory_mb",
    "disk_mb",
    "gpus",
    "executors",
    "prices",
    "expires_at",
}


def mask(*args: str, socket=None) -> subprocess.CompletedProcess:
    # the console script, as users run it (not `-m maskd.cli`, which imports cli twice)
    cmd = [sys.executable, "-c", "from maskd.cli import main; main()"]
    if socket is not None:
        cmd += ["--socket", str(socket)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60)


def test_cli_reads_against_a_real_daemon(cluster):
    a, b = cluster.devnet(2)
    r = mask("status", "--json", socket=a.socket)
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert STATUS_KEYS <= status.keys()
    assert (
        status["peer_id"] == a.peer_id
        and status["account"].startswith("0x")
        and status["peers"] == 1
    )
    peers = json.loads(mask("peers", "--json", socket=a.socket).stdout)
    assert [p["peer_id"] for p in peers] == [b.peer_id] and PEER_KEYS <= peers[0].keys()
    offers = json.loads(mask("offers", "--json", socket=a.socket).stdout)
    assert {o["peer_id"] for o in offers} == {a.peer_id, b.peer_id}
    assert all(OFFER_KEYS <= o.keys() for o in offers)
    for cmd in ("status", "peers", "offers"):
        r = mask(cmd, socket=a.socket)
        assert (
            r.returncode == 0
            and a.peer_id[-6:] in r.stdout + mask("status", socket=a.socket).stdout
        )


def test_cli_without_a_daemon_says_so_and_exits_1(tmp_path):
    r = mask("status", socket=tmp_path / "nothing.sock")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "hint: " in r.stderr and "Traceback" not in r.stderr
    r = mask("--debug", "status", socket=tmp_path / "nothing.sock")
    assert "Traceback" in r.stderr


@pytest.mark.asyncio
async def test_top_follows_a_real_daemon_through_a_restart(cluster):
    a, b = cluster.devnet(2)

    async def until(cond, pause, timeout=30.0):
        async with asyncio.timeout(timeout):
            while not cond():
                await pause()

    app = TopApp(socket_client_factory(a.socket), socket_label=a.socket, retry_cap=0.2)
    async with app.run_test(size=(180, 40)) as pilot:
        peers, offers = app.query_one(PeersTable), app.query_one(OffersTable)
        banner = app.query_one("#banner", Static)
        await until(lambda: peers.keys() == [b.peer_id] and offers.row_count == 2, pilot.pause)
        await asyncio.to_thread(a.stop)
        await until(lambda: banner.display, pilot.pause)
        assert "not reachable" in str(banner.render())
        # back on the same port, where b's re-dial loop looks for it
        port = a.addrs[0].split("/tcp/")[1].split("/")[0]
        a.extra_args = ["--listen", f"/ip4/127.0.0.1/tcp/{port}"]
        await asyncio.to_thread(lambda: a.start().wait_ready())
        await until(lambda: not banner.display, pilot.pause)
        await until(lambda: b.peer_id in peers.keys() and offers.row_count == 2, pilot.pause)
        await pilot.press("q")
