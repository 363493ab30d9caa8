"""Text from peers and jobs in the terminal: never markup, never raw escapes.

An offer's GPU name, a peer's address, a job's name, error, logs and
explanation all come from strangers. ``[/x]`` must not break a table (rich
markup) and ESC/OSC/BEL/C1/bidi characters must reach the terminal as
visible ``\\x1b``-style text, not as control sequences.
"""

from __future__ import annotations

import io
import json
import os
import time

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.text import Text

from maskd import cli_jobs, render
from maskd.cli import main, report_error
from maskd.rpc import RpcServer, maskd_version, serve_in_thread
from protocol.errors import MaskError, RpcError

HOSTILE = "[/x] H100\x1b]0;pwned\x07\x1b[2J\x9b31m\u202etxt.exe\u2066"
SHOWN = "[/x] H100\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202etxt.exe\\u2066"
# Bytes that must never reach the terminal from a stranger's text.
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066")
JOB_ID = "ab" * 32
PEER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"


def assert_clean(text: str) -> None:
    for raw in RAW:
        assert raw not in text, f"{raw!r} reached the output"


# --- safe_text / untrusted -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (HOSTILE, SHOWN),
        ("plain H100 80GB", "plain H100 80GB"),
        ("é 日本 😀 [bold]x[/]", "é 日本 😀 [bold]x[/]"),  # printable text is kept as is
        ("a\x00b\x7fc\x85d", "a\\x00b\\x7fc\\x85d"),  # NUL, DEL, C1 NEL
        ("line\nnext\tcol\rover", "line\\nnext\\tcol\\rover"),
        (
            "\u200b\u200e\u200f\u202a\u202d\u2067\u2069\ufeff",
            "\\u200b\\u200e\\u200f\\u202a\\u202d\\u2067\\u2069\\ufeff",
        ),
        ("\u2028\u2029", "\\u2028\\u2029"),  # line and paragraph separators
        ("tag\U000e0041", "tag\\U000e0041"),  # invisible tag characters
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("non-breaking\u00a0space", "non-breaking\u00a0space"),  # a space is harmless
    ],
)
def test_safe_text_makes_control_and_format_characters_visible(raw, shown):
    assert render.safe_text(raw) == shown


def test_multiline_keeps_newlines_and_tabs_only():
    assert render.safe_text("a\nb\tc\r\n\x1b[2J", multiline=True) == "a\nb\tc\\r\n\\x1b[2J"


def test_safe_text_takes_any_value_and_can_be_bounded():
    assert render.safe_text(None) == "None"
    assert render.safe_text(42) == "42"
    assert render.safe_text("x" * 50, max_chars=10) == "x" * 9 + "…"
    assert render.safe_text("\x1b" * 50, max_chars=10) == "\\x1b\\x1b\\…"


def test_untrusted_is_text_never_markup():
    text = render.untrusted(HOSTILE, style="red")
    assert isinstance(text, Text)
    assert text.plain == SHOWN
    assert str(text.style) == "red"
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(text)
    assert out.getvalue() == SHOWN + "\n"


def test_safe_markup_renders_as_the_same_text():
    assert Text.from_markup(render.safe_markup(HOSTILE)).plain == SHOWN
    assert Text.from_markup(render.safe_markup("ends with \\")).plain == "ends with \\"
    tricky = "\\[bold]x[/] [link=x]y[/link] [@click=quit]z"
    assert Text.from_markup(render.safe_markup(tricky)).plain == tricky


# --- tables ------------------------------------------------------------------------

NOW = 1_700_000_000.0


def hostile_offer() -> dict:
    return {
        "offer_id": "of-" + HOSTILE,
        "peer_id": PEER,
        "cpu": "[bold]9",
        "memory_mb": 8192,
        "disk_mb": 1024,
        "gpus": [{"name": HOSTILE, "memory_mb": 81920}],
        "executors": ["wasm", HOSTILE],
        "prices": {"cpu_core_hour": "2500000000000000"},
        "expires_at": NOW + 600,
    }


def hostile_peer() -> dict:
    return {
        "peer_id": PEER,
        "addrs": ["/ip4/1.2.3.4/tcp/1/" + HOSTILE],
        "latency_ms": 3.0,
        "score": 0.5,
        "offer": hostile_offer(),
    }


def printed(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(renderable)
    return out.getvalue()


@pytest.mark.parametrize(
    "table",
    [
        lambda: render.offers_table([hostile_offer()], now=NOW),
        lambda: render.peers_table([hostile_peer()]),
        lambda: render.node_table({"peer_id": PEER, "version": HOSTILE, "extra": HOSTILE}),
    ],
)
def test_tables_show_hostile_text_literally(table):
    out = printed(table())
    assert "[/x] H100" in out
    assert "\\x1b]0;pwned\\x07" in out
    assert_clean(out)


# --- the CLI against a daemon that relays hostile text ----------------------------------


def hostile_job() -> dict:
    return {
        "job_id": JOB_ID,
        "role": "requester",
        "name": HOSTILE,
        "state": "failed",
        "provider": PEER,
        "provider_account": "0x" + "1" * 40,
        "price": "[red]1",
        "usage": {"wall_ms": 5, "note": HOSTILE},
        "output_cid": "bafy" + HOSTILE,
        "error": {"code": "[/x]", "message": HOSTILE},
        "transitions": [{"at": NOW, "from": "pending", "to": HOSTILE, "event": HOSTILE}],
    }


LOGS = {
    "available": True,
    "stdout": "ok [bold]\n\x1b]0;pwned\x07\x1b[2Jdone\n",
    "stderr": "\x9b31m",
}


def handlers():
    async def info(params):
        return {"peer_id": PEER, "version": HOSTILE, "nat_status": HOSTILE}

    async def peers(params):
        return [hostile_peer()]

    async def offers(params):
        return [hostile_offer()]

    async def jobs(params):
        return [hostile_job()]

    async def get(params):
        return hostile_job()

    async def logs(params):
        return LOGS

    async def explain(params):
        return {"text": "provider 12D3: refused: " + HOSTILE + "\nnext line"}

    async def cancel(params):
        return {"state": HOSTILE}

    async def failing(params):
        raise RpcError(HOSTILE, rpc_code=-32004, code="job_not_found", hint=HOSTILE)

    return {
        "v1.node.info": info,
        "v1.peers.list": peers,
        "v1.offers.list": offers,
        "v1.jobs.list": jobs,
        "v1.jobs.get": get,
        "v1.jobs.logs": logs,
        "v1.jobs.explain": explain,
        "v1.jobs.cancel": cancel,
        "v1.jobs.result": failing,
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "maskd.sock"
    server = RpcServer(path, handlers(), version=maskd_version())
    with serve_in_thread(server) as socket_path:
        yield os.fspath(socket_path)


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.delenv("MASK_SOCKET", raising=False)
    monkeypatch.setenv("MASK_DATA_DIR", os.fspath(tmp_path / "no-daemon-here"))
    return CliRunner()


def mask(runner, daemon, *args):
    return runner.invoke(main, ["--socket", daemon, *args], catch_exceptions=False)


@pytest.mark.parametrize(
    "args",
    [
        ("offers",),
        ("peers",),
        ("status",),
        ("jobs",),
        ("job", JOB_ID),
        ("explain", JOB_ID),
        ("cancel", JOB_ID),
    ],
)
def test_commands_show_hostile_text_literally(runner, daemon, args):
    result = mask(runner, daemon, *args)
    assert result.exit_code == 0, result.output
    assert "\\x1b]0;pwned\\x07" in result.stdout
    assert_clean(result.output)


def test_offers_keep_the_gpu_name_readable(runner, daemon):
    out = mask(runner, daemon, "offers").stdout
    assert "[/x]" in out and "H100\\x1b]0;pwned" in out  # the cell wraps at the space


def test_job_detail_shows_error_and_transitions_as_text(runner, daemon):
    out = mask(runner, daemon, "job", JOB_ID).stdout
    assert "[/x]" in out and "[red]1" in out
    assert "pending -> [/x] H100" in out


def test_explain_keeps_its_lines(runner, daemon):
    out = mask(runner, daemon, "explain", JOB_ID).stdout
    assert out.splitlines()[1] == "next line"


def test_job_logs_on_a_terminal_are_made_safe(runner, daemon, monkeypatch):
    monkeypatch.setattr(cli_jobs, "_stdout_is_terminal", lambda: True)
    result = mask(runner, daemon, "job", JOB_ID, "--logs")
    assert result.exit_code == 0, result.output
    assert_clean(result.output)
    assert "ok [bold]\n\\x1b]0;pwned\\x07\\x1b[2Jdone\n" in result.stdout
    assert "\\x9b31m" in result.stdout


def test_job_logs_into_a_pipe_are_the_bytes_the_job_wrote(runner, daemon, monkeypatch):
    monkeypatch.setattr(cli_jobs, "_stdout_is_terminal", lambda: False)
    result = mask(runner, daemon, "job", JOB_ID, "--logs")
    assert result.exit_code == 0, result.output
    assert LOGS["stdout"] in result.stdout
    assert LOGS["stderr"] in result.stdout


def test_job_logs_as_json_are_json(runner, daemon):
    result = mask(runner, daemon, "job", JOB_ID, "--logs", "--json")
    assert_clean(result.stdout)  # JSON escapes control characters
    assert json.loads(result.stdout)["logs"] == LOGS


def test_errors_from_the_daemon_are_shown_literally(runner, daemon):
    result = mask(runner, daemon, "result", JOB_ID, "-o", "/tmp/never-written")
    assert result.exit_code == 1
    assert_clean(result.stderr)
    assert result.stderr.splitlines() == [f"error: {SHOWN}", f"hint: {SHOWN}"]


def test_report_error_escapes_message_and_hint(capsys):
    assert report_error(MaskError(HOSTILE, hint="a\x07b"), debug=False) == 1
    err = capsys.readouterr().err
    assert err == f"error: {SHOWN}\nhint: a\\x07b\n"


def test_a_version_warning_cannot_smuggle_escapes(runner, tmp_path):
    async def info(params):
        return {"peer_id": PEER}

    server = RpcServer(tmp_path / "v.sock", {"v1.node.info": info}, version="9\x1b]0;x\x07")
    with serve_in_thread(server) as path:
        result = mask(runner, os.fspath(path), "status")
    assert result.exit_code == 0
    assert_clean(result.stderr)
    assert "maskd 9\\x1b]0;x\\x07" in result.stderr


def test_put_shows_replication_refusals_literally(runner, tmp_path):
    async def put(params):
        return {"cid": "bafyroot", "size": 3, "blocks": 1}

    async def replicate(params):
        return {
            "requested": 2,
            "placed": [{"provider": HOSTILE, "expires_at": time.time(), "owed": "1"}],
            "refused": {PEER: HOSTILE},
        }

    server = RpcServer(
        tmp_path / "p.sock", {"v1.storage.put": put, "v1.storage.replicate": replicate}
    )
    data = tmp_path / "data.txt"
    data.write_text("abc")
    with serve_in_thread(server) as path:
        result = mask(runner, os.fspath(path), "put", os.fspath(data), "--replicate", "2")
    assert result.exit_code == 0, result.output
    assert_clean(result.output)
    assert f"refused by {PEER}: {SHOWN}" in result.stderr
    assert f"pinned by {SHOWN}" in result.stderr
