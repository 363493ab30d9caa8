"""``mask wallet …`` and ``mask ledger …`` against a real RpcServer (in a thread)
serving fake ``v1.wallet.*`` / ``v1.ledger.*`` handlers with the shapes of
docs/ledger.md ("RPC and the CLI"); they record the params they were sent."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from eth_account import Account

from maskd.cli import main
from maskd.cli_wallet import format_when, status_line
from maskd.daemon import DataDirLock
from maskd.rpc import RpcServer, maskd_version, serve_in_thread
from protocol.errors import RpcError

ME = "0x5Ce9454909639d2D17A3F753ce7d93fA0b9aB12E"
OTHER = "0x1111111111111111111111111111111111111111"
TX = "0x" + "ab" * 32
BALANCE = {
    "address": ME,
    "eth": "250000000000000000",
    "mask": "1000000000000000000000",
    "deposit": "1500000000000000000",
    "locked": "500000000000000000",
    "unlock_at": 1_900_000_000,
    "available": "1000000000000000000",
    "stake": "0",
    "earnings": "2500000000000000",
    "owed_to_me": "1",
    "owed_by_me": "7000000000000000",
}
BATCH = {
    "id": 3,
    "tx_hash": TX,
    "vouchers": [
        {"requester": "0x" + "44" * 20, "cumulative": "5"},
        {"requester": "0x" + "55" * 20, "cumulative": "9"},
    ],
    "gas_used": 112_462,
    "status": "final",
    "block": 41,
}
LEDGER = {
    "chain": {
        "backend": "rpc",
        "rpc_url": "http://127.0.0.1:8545",
        "chain_id": 31337,
        "confirmations": 2,
    },
    "contracts": {"token": "0x" + "22" * 20, "escrow": "0x" + "33" * 20},
    "channels": [
        {
            "requester": OTHER,
            "provider": ME,
            "cumulative": "3000000000000000000",
            "settled": "1000000000000000000",
            "direction": "in",
        },
        {
            "requester": ME,
            "provider": OTHER,
            "cumulative": "7000000000000000",
            "settled": "0",
            "direction": "out",
        },
    ],
    "batches": [BATCH],
    "pending_vouchers": [{"requester": "0x" + "44" * 20, "provider": ME, "cumulative": "7"}],
    "missing": [
        {
            "job_id": "job-7f3a",
            "requester": OTHER,
            "price": "2500000000000000",
            "due_at": 1_700_000_000,
        }
    ],
    "status": {
        "state": "retrying",
        "last_error": "connection refused",
        "next_retry_at": 4e9,
        "attempts": 4,
    },
}


class FakeMoney:
    """The daemon's money methods: canned results, ``calls`` records (method, params);
    ``fail`` maps a method to the RpcError it raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail: dict[str, RpcError] = {}
        self.answers: dict[str, object] = {
            "v1.wallet.show": {"address": ME},
            "v1.wallet.balance": BALANCE,
            "v1.wallet.deposit": {"tx_hash": TX, "deposit": "3000000000000000000"},
            "v1.wallet.withdraw": {"tx_hash": TX, "amount": "2500000000000000"},
            "v1.wallet.unlock": {
                "tx_hash": TX,
                "amount": "500000000000000000",
                "unlock_at": 1_900_000_000,
            },
            "v1.wallet.reclaim": {"tx_hash": TX, "amount": "500000000000000000"},
            "v1.wallet.stake": {"tx_hash": TX, "stake": "10000000000000000000"},
            "v1.ledger.show": LEDGER,
            "v1.ledger.settle": {"batches": [BATCH]},
        }

    def handlers(self) -> dict:
        def method(name):
            async def handler(params):
                self.calls.append((name, params))
                if name in self.fail:
                    raise self.fail[name]
                return self.answers[name]

            return handler

        return {name: method(name) for name in self.answers}


@pytest.fixture
def money():
    return FakeMoney()


@pytest.fixture
def daemon(tmp_path, money):
    server = RpcServer(tmp_path / "maskd.sock", money.handlers(), version=maskd_version())
    with serve_in_thread(server) as path:
        yield os.fspath(path)


@pytest.fixture
def runner(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("MASK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MASK_DATA_DIR", os.fspath(tmp_path / "data"))
    return CliRunner()


def invoke(runner, *args, **kwargs):
    return runner.invoke(main, list(args), catch_exceptions=False, **kwargs)


def test_balance_table_shows_mask_and_base_units(runner, daemon):
    result = invoke(runner, "--socket", daemon, "wallet", "balance")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in (
        ME,
        "0.25 ETH",
        "250000000000000000 wei",
        "1000 MASK",
        "1000000000000000000000",
        "1.5 MASK",
        "1500000000000000000",
        "0.0025 MASK",
        "0.000000000000000001 MASK",
        "owed by me",
        "mask wallet reclaim",
    ):
        assert expected in out, expected
    assert result.stderr == ""


def test_balance_json_is_the_rpc_result(runner, daemon):
    result = invoke(runner, "--socket", daemon, "wallet", "balance", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == BALANCE


@pytest.mark.parametrize(
    ("typed", "sent", "shown"),
    [
        ("1.5", "1500000000000000000", "1.5 MASK (1500000000000000000 base units)"),
        ("1500base", "1500", "0.0000000000000015 MASK (1500 base units)"),
        ("2 MASK", "2000000000000000000", "2 MASK (2000000000000000000 base units)"),
    ],
)
def test_deposit_sends_base_units_and_says_what_moved(runner, daemon, money, typed, sent, shown):
    result = invoke(runner, "--socket", daemon, "wallet", "deposit", typed)
    assert result.exit_code == 0, result.output
    assert money.calls[-1] == ("v1.wallet.deposit", {"amount": sent})
    assert f"deposited {shown}" in result.stdout
    assert "deposit now 3 MASK (3000000000000000000 base units)" in result.stdout
    assert TX in result.stdout


@pytest.mark.parametrize(
    ("method", "args", "params", "says"),
    [
        (
            "v1.wallet.withdraw",
            ["withdraw"],
            {},
            "withdrew 0.0025 MASK (2500000000000000 base units)",
        ),
        (
            "v1.wallet.unlock",
            ["unlock", "0.5"],
            {"amount": "500000000000000000"},
            "unlocking 0.5 MASK",
        ),
        (
            "v1.wallet.reclaim",
            ["reclaim"],
            {},
            "reclaimed 0.5 MASK (500000000000000000 base units)",
        ),
        (
            "v1.wallet.stake",
            ["stake", "10"],
            {"amount": "10000000000000000000"},
            "stake now 10 MASK",
        ),
    ],
)
def test_wallet_transactions(runner, daemon, money, method, args, params, says):
    result = invoke(runner, "--socket", daemon, "wallet", *args)
    assert result.exit_code == 0, result.output
    assert money.calls[-1] == (method, params)
    assert says in result.stdout and TX in result.stdout
    as_json = invoke(runner, "--socket", daemon, "wallet", *args, "--json")
    assert json.loads(as_json.stdout) == money.answers[method]


def test_unlock_says_when_to_reclaim(runner, daemon):
    result = invoke(runner, "--socket", daemon, "wallet", "unlock", "0.5")
    assert "`mask wallet reclaim` after " in result.stdout
    assert format_when(1_900_000_000, 0).split(" (")[0] in result.stdout


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ("-1", "negative"),
        ("abc", "not an amount"),
        ("0", "the amount is 0"),
        ("1.0000000000000000001", "19 decimals"),
        ("1.5e18wei", "not an amount"),
    ],
)
def test_bad_amounts_never_reach_the_daemon(runner, daemon, money, typed, says):
    result = invoke(runner, "--socket", daemon, "wallet", "deposit", "--", typed)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: ") and says in lines[0]
    assert lines[1].startswith("hint: ")
    assert money.calls == []


def test_a_negative_amount_without_dashes_is_a_usage_error(runner, daemon, money):
    result = invoke(runner, "--socket", daemon, "wallet", "unlock", "-1")
    assert result.exit_code == 2 and "No such option '-1'" in result.stderr
    assert money.calls == []


def test_daemon_refusal_gets_a_cli_hint(runner, daemon, money):
    money.fail["v1.wallet.unlock"] = RpcError(
        "the escrow deposit is smaller than the amount asked for", code="insufficient_deposit"
    )
    result = invoke(runner, "--socket", daemon, "wallet", "unlock", "5")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: the escrow deposit is smaller than the amount asked for",
        "hint: deposit more with `mask wallet deposit AMOUNT`; "
        "`mask wallet balance` shows what is available",
    ]


def test_the_daemons_own_hint_wins(runner, daemon, money):
    money.fail["v1.wallet.reclaim"] = RpcError(
        "the unlock request is not due yet", code="unlock_not_due", hint="wait until 12:00"
    )
    result = invoke(runner, "--socket", daemon, "wallet", "reclaim")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[1] == "hint: wait until 12:00"


def test_no_daemon_is_an_error_with_a_hint(runner, tmp_path):
    result = invoke(runner, "--socket", os.fspath(tmp_path / "none.sock"), "wallet", "balance")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: no maskd daemon at {tmp_path / 'none.sock'}")
    assert "\nhint: start one with `maskd" in result.stderr
    assert "Traceback" not in result.stderr


def test_ledger_table(runner, daemon):
    result = invoke(runner, "--socket", daemon, "ledger")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in (
        "rpc http://127.0.0.1:8545, chain id 31337, 2 confirmations",
        "0x" + "22" * 20,
        "0x" + "33" * 20,
        "chain unreachable: connection refused: retrying in",
        "(attempt 4)",
        "2 channels",
        "3 MASK",
        "2000000000000000000",  # unsettled in base units
        "0.007 MASK",
        "1 batch",
        TX,
        "112462",
        "final",
        "voucher missing: 1 job",
        "job-7f3a",
        "0.0025 MASK (2500000000000000 base units)",
        "pending vouchers",
    ):
        assert expected in out, expected


def test_ledger_json_is_the_rpc_result(runner, daemon):
    result = invoke(runner, "--socket", daemon, "ledger", "--json")
    assert json.loads(result.stdout) == LEDGER


def test_settle_waits_by_default(runner, daemon, money):
    result = invoke(runner, "--socket", daemon, "ledger", "settle")
    assert result.exit_code == 0, result.output
    assert money.calls[-1] == ("v1.ledger.settle", {"wait": True})
    assert TX in result.stdout and "final" in result.stdout
    result = invoke(runner, "--socket", daemon, "ledger", "settle", "--no-wait", "--json")
    assert money.calls[-1] == ("v1.ledger.settle", {"wait": False})
    assert json.loads(result.stdout) == {"batches": [BATCH]}


def test_settle_with_nothing_pending(runner, daemon, money):
    money.answers["v1.ledger.settle"] = {"batches": []}
    result = invoke(runner, "--socket", daemon, "ledger", "settle")
    assert result.exit_code == 0
    assert "nothing to settle" in result.stdout


def test_hostile_and_odd_answers_are_shown_not_obeyed(runner, daemon, money):
    evil = "\x1b]0;pwned\x07[red]x[/red]\u202e"
    money.answers["v1.wallet.balance"] = {"address": evil, "deposit": evil, "eth": None, "mask": -5}
    money.answers["v1.ledger.show"] = {
        "chain": "nope",
        "channels": [{"requester": evil, "cumulative": "12", "settled": "99"}, 7],
        "batches": [{"tx_hash": evil}, "x"],
        "missing": None,
        "status": {
            "state": "retrying",
            "last_error": evil,
            "next_retry_at": "soon",
            "attempts": True,
        },
    }
    money.answers["v1.wallet.deposit"] = {"tx_hash": evil, "deposit": {"a": 1}}
    money.answers["v1.ledger.settle"] = {"batches": [{"id": evil}]}
    for args in (
        ["wallet", "balance"],
        ["ledger"],
        ["wallet", "deposit", "1"],
        ["ledger", "settle"],
    ):
        result = invoke(runner, "--socket", daemon, *args)
        assert result.exit_code == 0, (args, result.output)
        assert "\x1b" not in result.output and "\u202e" not in result.output
        assert "\\x1b" in result.stdout, args


def test_status_line_states():
    now = 1_000.0
    assert status_line({"state": "ok"}, now).plain == "ok"
    assert "off" in status_line({"state": "off"}, now).plain
    line = status_line(
        {
            "state": "retrying",
            "last_error": "timeout",
            "next_retry_at": 1_008.0,
            "attempts": 4,
            "since": 900.0,
        },
        now,
    ).plain
    assert line.startswith("chain unreachable since ")
    assert line.endswith(": timeout: retrying in 8s (attempt 4)")
    assert status_line(None, now).plain == "—"


def test_format_when():
    assert format_when(None, 0) == "—" and format_when(0, 0) == "—" and format_when(True, 0) == "—"
    assert format_when(1e30, 0) == "—"
    assert format_when(1_060, 1_000).endswith("(in 1m 0s)")
    assert format_when(1_000, 1_060).endswith("(1m 0s ago)")


# --- wallet show: the daemon when it runs, else the keystore file ----------------


def _keystore(data_dir, key_byte):
    """A real keystore (pbkdf2 with 1 round: show never decrypts it); returns its address."""
    key = bytes([key_byte]) * 32
    data_dir.mkdir(parents=True, exist_ok=True)
    body = Account.encrypt(key, "pw", kdf="pbkdf2", iterations=1)
    (data_dir / "account.json").write_text(json.dumps(body))
    return Account.from_key(key).address


def test_show_reads_the_keystore_when_no_daemon_runs(runner, tmp_path):
    address = _keystore(tmp_path / "data", 1)
    result = invoke(runner, "wallet", "show")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == address
    assert "account.json" in result.stderr
    data = json.loads(invoke(runner, "wallet", "show", "--json").stdout)
    assert data == {"address": address}


def test_show_accepts_data_dir_and_config(runner, tmp_path):
    address = _keystore(tmp_path / "elsewhere", 2)
    result = invoke(runner, "wallet", "show", "--data-dir", os.fspath(tmp_path / "elsewhere"))
    assert result.stdout.strip() == address
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "elsewhere"}"\n')
    runner_env = {"MASK_DATA_DIR": None}
    result = invoke(runner, "wallet", "show", "--config", os.fspath(config), env=runner_env)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == address


def test_show_asks_the_running_daemon(runner, tmp_path, money):
    data = tmp_path / "data"
    assert _keystore(data, 3) != ME  # the daemon's answer wins over the file's claim
    lock = DataDirLock(data)
    lock.acquire()
    server = RpcServer(data / "maskd.sock", money.handlers(), version=maskd_version())
    try:
        with serve_in_thread(server):
            result = invoke(runner, "wallet", "show", "--json")
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"address": ME}
    assert money.calls == [("v1.wallet.show", {})]


def test_show_without_an_account(runner, tmp_path):
    result = invoke(runner, "wallet", "show")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: no account keystore at {tmp_path / 'data'}")
    assert "hint: `mask wallet new`" in result.stderr


def test_show_with_a_junk_keystore(runner, tmp_path):
    (tmp_path / "data").mkdir()
    for junk, says in (("[" * 60_000, "not JSON"), (" " * 70_000, "larger than 65536 bytes")):
        (tmp_path / "data" / "account.json").write_text(junk)
        result = invoke(runner, "wallet", "show")
        assert result.exit_code == 1
        assert says in result.stderr and "hint:" in result.stderr


def test_batches_and_pending_vouchers_are_counted_not_dumped():
    from rich.console import Console

    from maskd.cli_wallet import batches_table, ledger_view

    console = Console(width=200, record=True)
    console.print(batches_table([BATCH]))
    console.print(ledger_view(LEDGER, now=1_700_000_000))
    text = console.export_text()
    assert "{'requester'" not in text and "[{" not in text
    row = next(line for line in text.splitlines() if TX[:10] in line)
    assert " 2 " in row
