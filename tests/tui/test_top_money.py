"""``mask top``'s money view (``m``): Pilot against FakeTopClient, and a real node's
chain-off answers over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from eth_account import Account
from rich.text import Text
from textual.widgets import Static

from maskd.config import load_config
from maskd.money import Money
from maskd.rpc import RpcServer, serve_in_thread
from maskd.tui import TopApp, socket_client_factory
from maskd.tui import money as money_view
from maskd.tui.money import (
    BalancesTable,
    BatchesTable,
    ChannelsTable,
    MissingTable,
    MoneyPane,
    PendingTable,
    amount_cell,
    batch_row,
    channel_row,
)
from maskd.tui.testing import FakeTopClient
from maskd.tui.widgets import KeyedTable, PeersTable
from protocol.errors import DaemonUnavailable, RpcError

NOW = 1_700_000_000.0
WAIT_S = 5
MASK = 10**18
ME = "0x" + "Ab" * 20
REQ = "0x" + "11" * 20
PROV = "0x" + "22" * 20
TX = "0x" + "ab" * 32
JOB_ID = "cd" * 32
NODE = {"peer_id": "12D3KooWNodeSelf0000", "uptime_s": 60.0}
HOSTILE = "[/x] boom\x1b]0;pwned\x07\x9b31m\u202etxt"
SHOWN = "[/x] boom\\x1b]0;pwned\\x07\\x9b31m\\u202etxt"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")

OK = {"state": "ok", "attempts": 0, "last_error": None, "next_retry_at": None, "since": None}
LEDGER = {
    "chain": {"backend": "embedded", "rpc_url": "embedded", "chain_id": 31337, "confirmations": 1},
    "contracts": {"token": "0x" + "33" * 20, "escrow": "0x" + "44" * 20},
    "account": ME,
    "channels": [
        {
            "requester": REQ,
            "provider": ME,
            "direction": "in",
            "cumulative": str(3 * MASK),
            "settled": str(MASK),
        },
        {
            "requester": ME,
            "provider": PROV,
            "direction": "out",
            "cumulative": str(MASK // 2),
            "settled": None,  # the chain could not be read
        },
    ],
    "batches": [
        {
            "id": 1,
            "status": "final",
            "tx_hash": TX,
            "vouchers": [{"requester": REQ, "cumulative": str(MASK)}],
            "gas_used": 83005,
            "block": 12,
            "error": None,
        },
        {"id": 2, "status": "planned", "tx_hash": None, "vouchers": [], "gas_used": None},
    ],
    "pending_vouchers": [{"requester": REQ, "provider": ME, "cumulative": str(3 * MASK)}],
    "missing": [{"job_id": JOB_ID, "requester": REQ, "price": str(MASK // 4), "due_at": NOW - 125}],
    "status": OK,
}
BALANCE = {
    "address": ME,
    "eth": str(10 * MASK),
    "mask": str(100 * MASK),
    "deposit": str(5 * MASK),
    "locked": str(MASK),
    "unlock_at": NOW + 3600,
    "available": str(4 * MASK),
    "stake": "0",
    "earnings": "1500000000000000001",
    "owed_to_me": str(2 * MASK),
    "owed_by_me": str(MASK // 2),
}
RETRYING = {
    "state": "retrying",
    "attempts": 4,
    "last_error": "settling failed: connection refused",
    "next_retry_at": NOW + 8,
    "since": NOW - 30,
}


def ledger(**changes) -> dict:
    return {**copy.deepcopy(LEDGER), **changes}


def make_app(factory, *, refresh_interval: float = 3600.0) -> TopApp:
    return TopApp(
        factory,
        socket_label="/tmp/t/maskd.sock",
        refresh_interval=refresh_interval,
        retry_initial=0.01,
        retry_cap=0.05,
        clock=lambda: NOW,
    )


async def wait_until(pilot, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await pilot.pause()


async def open_money(pilot, fake: FakeTopClient | None = None) -> None:
    """Connected, then ``m``: the money view is shown and has been read once."""
    app = pilot.app
    await wait_until(pilot, lambda: app.loads >= 1)
    loads = app.money_loads
    await pilot.press("m")
    await wait_until(pilot, lambda: app.money_loads > loads)
    await pilot.pause()  # one more frame: every cell has been drawn


async def reread(pilot) -> None:
    """Leave the money view and open it again: it is read at once (no waiting on a timer)."""
    app = pilot.app
    loads = app.money_loads
    await pilot.press("m", "m")
    await wait_until(pilot, lambda: app.money_loads > loads)
    await pilot.pause()


def shown(cell) -> str:
    return cell.plain if isinstance(cell, Text) else Text.from_markup(cell).plain


def cells(table: KeyedTable, key: str) -> list[str]:
    return [shown(c) for c in table.get_row(key)]


def status(app) -> str:
    return str(app.query_one("#money-status", Static).render())


def note(app) -> Static:
    return app.query_one("#money-note", Static)


def cells_of(row: dict) -> list[str]:
    return [shown(c) for c in row.values()]


def everything_shown(app) -> list[str]:
    texts = [status(app), str(note(app).render())]
    for table in app.query_one(MoneyPane).query(KeyedTable):
        texts.append(str(table.border_title))
        texts.extend(shown(c) for key in table.keys() for c in table.get_row(key))
    return texts


# -- rows (pure) --


def test_rows_format_amounts_addresses_and_batches():
    assert shown(amount_cell("1500000000000000001")) == "1.500000000000000001 MASK"
    assert shown(amount_cell(None)) == "—"
    odd = amount_cell("-1\x1b[2J")
    assert shown(odd) == "-1\\x1b[2J" and str(odd.style) == "red"
    assert cells_of(channel_row(LEDGER["channels"][0])) == [
        "in",
        "0x1111…1111",
        "3 MASK",
        "1 MASK",
        "2 MASK",
    ]
    # out: the counterparty is the provider; unknown settled leaves unsettled unknown
    assert cells_of(channel_row(LEDGER["channels"][1])) == [
        "out",
        "0x2222…2222",
        "0.5 MASK",
        "—",
        "—",
    ]
    assert cells_of(batch_row(LEDGER["batches"][0])) == [
        "1",
        "0xabababab…abab",
        "1",
        "83,005",
        "final",
        "12",
        "—",
    ]
    assert cells_of(batch_row({"id": True, "vouchers": 3, "gas_used": -1})) == [
        "True",  # not a batch id: shown as it came, in red
        "—",
        "3",
        "-1",
        "—",
        "—",
        "—",
    ]


# -- the view --


@pytest.mark.asyncio
async def test_money_view_shows_balances_channels_vouchers_missing_and_batches():
    fake = FakeTopClient(NODE, ledger=ledger(), balance=BALANCE)
    app = make_app(fake.connect)
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_until(pilot, lambda: app.loads >= 1)
        assert fake.money_calls == 0  # nothing read while the view is not shown
        await open_money(pilot)
        assert app.view == "money" and app.query_one(MoneyPane).display
        assert fake.money_calls == 2  # v1.ledger.show and v1.wallet.balance, once each

        assert status(app) == "chain 31337 (embedded): ok"
        assert not note(app).display
        balances = app.query_one(BalancesTable)
        assert str(balances.border_title) == f"wallet {ME}"
        assert balances.keys() == [
            "wallet",
            "deposit",
            "locked",
            "available",
            "stake",
            "earnings",
            "owed_to_me",
            "owed_by_me",
        ]
        assert cells(balances, "wallet")[:3] == ["wallet", "100 MASK", str(100 * MASK)]
        assert cells(balances, "earnings")[1:3] == [
            "1.500000000000000001 MASK",
            "1500000000000000001",
        ]
        assert cells(balances, "locked")[3] == "being taken back; reclaimable in 1h 0m"
        assert cells(balances, "owed_by_me")[1:3] == ["0.5 MASK", str(MASK // 2)]
        assert cells(balances, "stake")[1:3] == ["0 MASK", "0"]

        channels = app.query_one(ChannelsTable)
        assert channels.border_title == "2 channels"
        assert [cells(channels, k) for k in channels.keys()] == [
            ["in", "0x1111…1111", "3 MASK", "1 MASK", "2 MASK"],
            ["out", "0x2222…2222", "0.5 MASK", "—", "—"],
        ]
        pending = app.query_one(PendingTable)
        assert pending.border_title == "1 pending voucher"
        assert cells(pending, pending.keys()[0]) == ["0x1111…1111", "0xAbAb…AbAb", "3 MASK"]
        missing = app.query_one(MissingTable)
        assert missing.border_title == "1 voucher_missing job"
        assert cells(missing, JOB_ID) == ["cdcdcdcd…cdcd", "0x1111…1111", "0.25 MASK", "2m 5s ago"]
        batches = app.query_one(BatchesTable)
        assert batches.border_title == "2 batches"
        assert batches.keys() == ["2", "1"]  # newest first
        assert cells(batches, "1") == ["1", "0xabababab…abab", "1", "83,005", "final", "12", "—"]
        assert cells(batches, "2")[:5] == ["2", "—", "0", "—", "planned"]
        assert str(batches.get_cell("1", "status").style) == "green"

        # back to peers & jobs: money is no longer read
        await pilot.press("m")
        await wait_until(pilot, lambda: app.view == "tables")
        assert app.query_one(PeersTable).display and not app.query_one(MoneyPane).display
        calls = fake.money_calls
        fake.push_event({"type": "node.info"})  # a snapshot reload, not a money read
        await wait_until(pilot, lambda: app.loads >= 2)
        assert fake.money_calls == calls


@pytest.mark.asyncio
async def test_money_is_polled_while_shown_and_follows_changes():
    fake = FakeTopClient(NODE, ledger=ledger(), balance=BALANCE)
    app = make_app(fake.connect, refresh_interval=0.25)
    async with app.run_test(size=(200, 60)) as pilot:
        await open_money(pilot)
        # the batch is mined and a new channel appears, without any event
        fake.ledger_state["batches"][1].update(status="sent", tx_hash="0x" + "ef" * 32)
        fake.ledger_state["channels"].append(
            {"requester": "0x" + "55" * 20, "provider": ME, "direction": "in",
             "cumulative": "1", "settled": "0"}
        )  # fmt: skip
        batches, channels = app.query_one(BatchesTable), app.query_one(ChannelsTable)
        await wait_until(pilot, lambda: cells(batches, "2")[1] == "0xefefefef…efef")
        await wait_until(pilot, lambda: channels.row_count == 3)
        assert cells(channels, channels.keys()[2])[4] == "0.000000000000000001 MASK"


@pytest.mark.asyncio
async def test_bindings_and_help():
    fake = FakeTopClient(NODE, ledger=ledger(), balance=BALANCE)
    app = make_app(fake.connect)
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_until(pilot, lambda: app.loads >= 1)

        def footer() -> dict[str, str]:
            active = app.screen.active_bindings
            return {k: active[k].binding.description for k in ("m", "question_mark", "q")}

        assert footer() == {"m": "money", "question_mark": "help", "q": "quit"}
        await open_money(pilot)
        assert footer() == {"m": "peers & jobs", "question_mark": "help", "q": "quit"}
        assert app.sub_title == "money"
        help_text = app.query_one("#help", Static)
        assert not help_text.display
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: help_text.display)
        assert "m  money view" in str(help_text.render())
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: not help_text.display)


@pytest.mark.asyncio
async def test_chain_off_says_so_instead_of_empty_tables():
    fake = FakeTopClient(NODE)  # no ledger: chain.backend = off, answered as maskd.money does
    app = make_app(fake.connect)
    async with app.run_test(size=(160, 40)) as pilot:
        await open_money(pilot)
        assert status(app) == "no chain (chain.backend = off)"
        assert note(app).display
        assert "chain] backend" in str(note(app).render())
        for name in ("#balances", "#channels", "#batches", "#vouchers"):
            assert not app.query_one(name).display
        assert fake.money_calls == 1  # the ledger said off: the balance is not asked
        assert not app.query_one("#banner", Static).display


@pytest.mark.asyncio
async def test_chain_off_refusal_of_either_call_says_so_too():
    fake = FakeTopClient(NODE, ledger=ledger(), balance=BALANCE)
    off = RpcError("this node has no chain", code="chain_off", hint="set [chain] backend")
    fake.money_errors["v1.wallet.balance"] = off
    app = make_app(fake.connect)
    async with app.run_test(size=(160, 40)) as pilot:
        await open_money(pilot)
        assert status(app) == "no chain (chain.backend = off)"
        assert str(note(app).render()) == "set [chain] backend"
        assert not app.query_one("#channels").display
        # the node is restarted with a chain: the tables come back
        fake.money_errors.clear()
        await reread(pilot)
        assert app.query_one("#channels").display
        assert status(app) == "chain 31337 (embedded): ok"
        fake.money_errors["v1.ledger.show"] = off
        await reread(pilot)
        assert not app.query_one("#channels").display
        assert status(app) == "no chain (chain.backend = off)"


@pytest.mark.asyncio
async def test_retrying_chain_shows_the_error_and_the_next_retry():
    fake = FakeTopClient(NODE, ledger=ledger(status=RETRYING), balance=None)
    app = make_app(fake.connect)
    async with app.run_test(size=(200, 60)) as pilot:
        await open_money(pilot)
        assert status(app) == (
            "chain 31337 (embedded): retrying (attempt 4): settling failed: "
            "connection refused — next retry in 8s"
        )
        # the balance could not be read either: said in the note, rows show "—"
        assert str(note(app).render()) == (
            "v1.wallet.balance: the chain is not connected: not connected to the chain yet "
            "(`mask ledger` shows the retries; check [chain] rpc_url)"
        )
        balances = app.query_one(BalancesTable)
        assert cells(balances, "deposit")[1:3] == ["—", "—"]
        assert "(not read)" in str(balances.border_title)
        assert app.query_one(ChannelsTable).row_count == 2  # the ledger part still shows
        assert not app.query_one("#banner", Static).display

        # retry time passed, still failing; then the chain comes back
        fake.ledger_state["status"] = {**RETRYING, "next_retry_at": None, "attempts": 5}
        await reread(pilot)
        assert "retrying (attempt 5)" in status(app)
        assert status(app).endswith("— retrying now")
        fake.ledger_state["status"] = OK
        fake.balance_state = BALANCE
        await reread(pilot)
        assert status(app) == "chain 31337 (embedded): ok"
        assert not note(app).display
        assert cells(balances, "deposit")[1] == "5 MASK"
        assert "(not read)" not in str(balances.border_title)
        assert fake.connects == 1  # refusals never ended the session


@pytest.mark.asyncio
async def test_connecting_old_daemon_and_timeout_stay_in_the_view():
    connecting = {"state": "connecting", "attempts": 0, "last_error": "cannot reach the chain"}
    fake = FakeTopClient(NODE, ledger=ledger(status=connecting), balance=BALANCE)
    fake.money_errors["v1.wallet.balance"] = DaemonUnavailable(
        "maskd at /x did not answer v1.wallet.balance within 10 s", code="daemon_timeout"
    )
    app = make_app(fake.connect)
    async with app.run_test(size=(200, 60)) as pilot:
        await open_money(pilot)
        assert status(app) == "chain 31337 (embedded): connecting: cannot reach the chain"
        assert "did not answer v1.wallet.balance within 10 s" in str(note(app).render())
        assert fake.connects == 1 and not app.query_one("#banner", Static).display

        fake.money_errors.clear()
        fake.supports_money = False  # a daemon from before money
        await reread(pilot)
        assert "predates" in status(app)
        assert not app.query_one("#channels").display and not note(app).display
        assert fake.connects == 1


@pytest.mark.asyncio
async def test_daemon_gone_while_reading_money_reconnects_and_reads_again():
    fake = FakeTopClient(NODE, ledger=ledger(), balance=BALANCE)
    app = make_app(fake.connect)
    async with app.run_test(size=(160, 40)) as pilot:
        await open_money(pilot)
        fake.money_errors["v1.ledger.show"] = DaemonUnavailable("no maskd daemon at /x")
        fake.disconnect()
        await wait_until(pilot, lambda: app.query_one("#banner", Static).display)
        fake.money_errors.clear()
        loads = app.money_loads
        fake.reconnect()
        # the new session reads money at once: the view is still shown
        await wait_until(pilot, lambda: app.money_loads > loads)
        assert fake.connects == 2 and status(app) == "chain 31337 (embedded): ok"


@pytest.mark.asyncio
async def test_long_tables_are_bounded_and_say_so(monkeypatch):
    monkeypatch.setattr(money_view, "MAX_ROWS", 3)
    many = [
        {"requester": f"0x{n:040x}", "provider": ME, "direction": "in",
         "cumulative": str(n), "settled": "0"}
        for n in range(10)
    ]  # fmt: skip
    fake = FakeTopClient(NODE, ledger=ledger(channels=many), balance=BALANCE)
    app = make_app(fake.connect)
    async with app.run_test(size=(160, 40)) as pilot:
        await open_money(pilot)
        channels = app.query_one(ChannelsTable)
        assert channels.row_count == 3
        assert channels.border_title == "first 3 of 10 channels"


@pytest.mark.asyncio
async def test_hostile_strings_in_money_render_escaped():
    hostile = ledger(
        status={**RETRYING, "last_error": HOSTILE},
        channels=[
            {"requester": HOSTILE, "provider": ME, "direction": "in",
             "cumulative": HOSTILE, "settled": "0"},
            {"requester": ME, "provider": PROV, "direction": HOSTILE,
             "cumulative": "1", "settled": "0"},
        ],
        batches=[{"id": 7, "status": HOSTILE, "tx_hash": HOSTILE, "vouchers": HOSTILE,
                  "gas_used": HOSTILE, "block": HOSTILE, "error": HOSTILE}],
        pending_vouchers=[{"requester": HOSTILE, "provider": "[b]x", "cumulative": HOSTILE}],
        missing=[{"job_id": HOSTILE, "requester": HOSTILE, "price": HOSTILE, "due_at": HOSTILE}],
        chain={"backend": HOSTILE, "rpc_url": HOSTILE, "chain_id": HOSTILE},
    )  # fmt: skip
    fake = FakeTopClient(NODE, ledger=hostile, balance={**BALANCE, "address": HOSTILE})
    fake.balance_state["deposit"] = HOSTILE
    app = make_app(fake.connect)
    async with app.run_test(size=(240, 60)) as pilot:
        await open_money(pilot)
        line = status(app)
        assert f"retrying (attempt 4): {SHOWN}" in line
        assert line.startswith(f"chain — ({SHOWN}): ")
        channels = app.query_one(ChannelsTable)
        first = cells(channels, channels.keys()[0])
        assert first[1] == SHOWN and first[2] == SHOWN
        assert str(channels.get_cell(channels.keys()[0], "counterparty").style) == "red"
        assert cells(channels, channels.keys()[1])[0] == SHOWN
        assert cells(app.query_one(BatchesTable), "7")[1:] == [SHOWN] * 6
        assert cells(app.query_one(BalancesTable), "deposit")[1:3] == [SHOWN, SHOWN]
        assert SHOWN in str(app.query_one(BalancesTable).border_title)
        pending = app.query_one(PendingTable)
        assert cells(pending, pending.keys()[0]) == [SHOWN, "[b]x", SHOWN]

        # and an error message from the daemon, in the note
        fake.money_errors["v1.wallet.balance"] = RpcError(HOSTILE, code="chain_error", hint=HOSTILE)
        await reread(pilot)
        assert str(note(app).render()) == f"v1.wallet.balance: {SHOWN} ({SHOWN})"

        for text in everything_shown(app):
            for raw in RAW:
                assert raw not in text


# -- a real node without a chain, over a real socket --


@contextlib.contextmanager
def chain_off_node(tmp_path: Path):
    config = load_config(
        env={}, overrides={"node": {"data_dir": str(tmp_path)}, "chain": {"backend": "off"}}
    )
    node_money = Money(config, Account.create().key, data_path=tmp_path, clock=lambda: NOW)

    async def info(params):
        return NODE

    async def empty(params):
        return []

    handlers = {
        "v1.node.info": info,
        "v1.peers.list": empty,
        "v1.offers.list": empty,
        "v1.jobs.list": empty,
        **node_money.rpc_methods(),
    }

    async def watch(params, send):
        await trio.sleep_forever()

    server = RpcServer(tmp_path / "maskd.sock", handlers, {"v1.watch": watch})
    with serve_in_thread(server) as path:
        yield path


@pytest.mark.asyncio
async def test_real_node_without_a_chain_over_a_socket(tmp_path):
    with chain_off_node(tmp_path) as path:
        app = TopApp(socket_client_factory(path), socket_label=path, refresh_interval=3600.0)
        async with app.run_test(size=(160, 40)) as pilot:
            await open_money(pilot)
            assert status(app) == "no chain (chain.backend = off)"
            assert not app.query_one("#channels").display
            assert not app.query_one("#banner", Static).display
