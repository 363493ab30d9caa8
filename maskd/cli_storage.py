"""``mask put|get|pin|unpin`` and ``mask blocks gc|stat``: the data plane's CLI.

Paths are resolved here and sent absolute (the daemon runs on this machine
but not in this directory). Progress: ``put`` shows a spinner while the daemon
imports (it hashes in a worker thread and reports nothing until done), then
the CID and size; ``get`` shows a progress bar fed by the daemon's
``storage.progress`` events over ``v1.watch`` (blocks and bytes fetched, out
of the DAG's size once its root has arrived). Both only on a terminal and
never with ``--json``.

Text from the daemon that a peer may have written (a provider's refusal, a
CID a peer sent) goes through ``render.safe_text``: escapes made visible.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TransferSpeedColumn,
)

from maskd import render

if TYPE_CHECKING:
    from maskd.cli import CliState

# Not imported from maskd.cli: it imports this module to register the commands,
# and under `python -m maskd.cli` that cycle would load maskd.cli twice. The
# group's ``ctx.obj`` is its CliState, so ``click.pass_obj`` hands it over.
pass_state = click.pass_obj


def json_option(func: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


# A put or get of many GB can take a long time; the daemon bounds its own work.
LONG_CALL_S = 24 * 3600.0


def _safe(value: Any) -> str:
    return render.safe_text(value, max_chars=render.CELL_MAX_CHARS)


def _err_console() -> Console:
    return Console(stderr=True, highlight=False)


def _human(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


@contextmanager
def _spinner(text: str, enabled: bool):
    if not enabled:
        yield
        return
    with _err_console().status(render.untrusted(text)):
        yield


@click.command("put")
@click.argument("path", type=click.Path(exists=True, dir_okay=True, resolve_path=True))
@click.option("--encrypt-to", metavar="PEER", help="Encrypt to this peer's X25519 key first.")
@click.option(
    "--replicate", type=click.IntRange(0, 16), default=0, help="Ask N storage providers to pin it."
)
@click.option(
    "--duration-hours",
    type=click.FloatRange(min=1 / 60, max=365 * 24),
    default=24.0,
    show_default=True,
    help="How long the providers keep it (with --replicate).",
)
@json_option
@pass_state
def put(
    state: CliState,
    path: str,
    encrypt_to: str | None,
    replicate: int,
    duration_hours: float,
    as_json: bool,
) -> None:
    """Add a file or directory to the node's store; print its CID."""
    params: dict[str, Any] = {"path": os.path.abspath(path)}
    if encrypt_to:
        params["encrypt_to"] = encrypt_to
    show = not as_json and sys.stderr.isatty()
    with state.connect() as client:
        with _spinner(f"importing {path}", show):
            result = client.call("v1.storage.put", params, timeout=LONG_CALL_S)
        if replicate:
            with _spinner(f"asking {replicate} provider(s) to pin it", show):
                result["replication"] = client.call(
                    "v1.storage.replicate",
                    {
                        "cid": result["cid"],
                        "copies": replicate,
                        "duration_s": duration_hours * 3600,
                    },
                    timeout=LONG_CALL_S,
                )
    if as_json:
        print_json(result)
        return
    click.echo(_safe(result["cid"]))
    if show:
        blocks = result.get("blocks")
        extra = f", {blocks} blocks" if blocks is not None else ""
        _err_console().print(render.untrusted(f"{_human(result['size'])}{extra}", style="dim"))
    rep = result.get("replication")
    if rep:
        for placed in rep["placed"]:
            click.echo(
                f"pinned by {_safe(placed['provider'])} until {placed['expires_at']:.0f} "
                f"(owed {_safe(placed['owed'])} base units)",
                err=True,
            )
        for peer, why in rep["refused"].items():
            click.echo(f"refused by {_safe(peer)}: {_safe(why)}", err=True)
        if len(rep["placed"]) < rep["requested"]:
            click.echo(
                f"warning: {len(rep['placed'])} of {rep['requested']} copies placed", err=True
            )


def _watch_progress(state: CliState, cid: str, progress: Progress, stop: threading.Event):
    """In a thread: feed ``storage.progress`` events for ``cid`` into the bar."""
    from maskd.client import Client

    task = progress.add_task(render.safe_markup(f"fetching {cid[:16]}…"), total=None)
    try:
        with Client.connect(state.socket) as client:
            for event in client.watch():
                if stop.is_set():
                    return
                if event.get("type") != "storage.progress" or event.get("cid") != cid:
                    continue
                progress.update(
                    task, completed=event.get("bytes_done", 0), total=event.get("dag_bytes")
                )
    except Exception:
        return  # progress is a courtesy; the call itself reports errors


@click.command("get")
@click.argument("cid")
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    type=click.Path(resolve_path=True),
    help="Where to write it (must not exist).",
)
@click.option("--pin", is_flag=True, help="Also pin it in the local store.")
@click.option(
    "--symlinks",
    is_flag=True,
    help="Write the DAG's symlinks too (only relative ones that stay inside -o;"
    " without this flag a DAG holding a symlink is refused).",
)
@json_option
@pass_state
def get(state: CliState, cid: str, dest: str, pin: bool, symlinks: bool, as_json: bool) -> None:
    """Fetch a CID (from the local store or peers) and write it to -o PATH."""
    params = {"cid": cid, "dest": os.path.abspath(dest), "pin": pin}
    if symlinks:
        params["symlinks"] = True
    show = not as_json and sys.stderr.isatty()
    with state.connect() as client:
        if not show:
            result = client.call("v1.storage.get", params, timeout=LONG_CALL_S)
        else:
            stop = threading.Event()
            columns = (
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
            )
            with Progress(*columns, console=_err_console(), transient=True) as progress:
                watcher = threading.Thread(
                    target=_watch_progress, args=(state, cid, progress, stop), daemon=True
                )
                watcher.start()
                try:
                    result = client.call("v1.storage.get", params, timeout=LONG_CALL_S)
                finally:
                    stop.set()
    if as_json:
        print_json(result)
        return
    click.echo(_safe(result["dest"]))
    if show:
        _err_console().print(
            render.untrusted(
                f"{_human(result['size'])}; fetched {result['fetched_blocks']} blocks "
                f"from {len(result.get('peers_used') or {})} peer(s)",
                style="dim",
            )
        )


@click.command("pin")
@click.argument("cid")
@pass_state
def pin(state: CliState, cid: str) -> None:
    """Pin a CID (its whole DAG must be in the local store)."""
    result = state.call("v1.storage.pin", {"cid": cid})
    click.echo(f"pinned {_safe(result['cid'])}")


@click.command("unpin")
@click.argument("cid")
@pass_state
def unpin(state: CliState, cid: str) -> None:
    """Unpin a CID; `mask blocks gc` then frees its blocks."""
    result = state.call("v1.storage.unpin", {"cid": cid})
    cid_text = _safe(result["cid"])
    click.echo(f"unpinned {cid_text}" if result["unpinned"] else f"{cid_text} was not pinned")


@click.group("blocks")
def blocks() -> None:
    """The local block store."""


@blocks.command("gc")
@json_option
@pass_state
def blocks_gc(state: CliState, as_json: bool) -> None:
    """Delete every block not reachable from a pin."""
    result = state.call("v1.storage.gc")
    if as_json:
        print_json(result)
    else:
        click.echo(f"removed {result['blocks']} blocks, {_human(result['bytes'])}")


@blocks.command("stat")
@json_option
@pass_state
def blocks_stat(state: CliState, as_json: bool) -> None:
    """Blocks, bytes, pins and quota of the local store."""
    st = state.call("v1.storage.stat")
    if as_json:
        print_json(st)
        return
    quota = st.get("quota_bytes")
    used = f"{_human(st['bytes'])} of {_human(quota)}" if quota else _human(st["bytes"])
    ex = st.get("exchange") or {}
    lines = [
        ("backend", st.get("backend", "local")),
        ("blocks", f"{st['blocks']:,}"),
        ("used", used),
        ("pinned roots", str(st["pinned_roots"])),
        ("served", f"{ex.get('served_blocks', 0):,} blocks, {_human(ex.get('served_bytes', 0))}"),
        (
            "fetched",
            f"{ex.get('fetched_blocks', 0):,} blocks, {_human(ex.get('fetched_bytes', 0))}",
        ),
        ("corrupt from peers", str(ex.get("corrupt_blocks", 0))),
        ("replicas hosted", str(st.get("replicas_hosted", 0))),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {_safe(value)}")


def register(main: click.Group) -> None:
    for command in (put, get, pin, unpin, blocks):
        main.add_command(command)
