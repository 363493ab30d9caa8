"""``mask``: the thin client. Every command is one or two RPC calls and a table.

How to extend: define a click command or group in its own module and attach
it with ``main.add_command(...)`` (``devnet``, ``demo``, ``put``, ``submit``
…). Commands get the connection settings from ``ctx.obj`` (a ``CliState``;
use ``@pass_state`` and ``state.connect()``), and must not catch
``MaskError`` themselves: ``MaskGroup.invoke`` maps it, once, for every
command below ``main``, to ``error: …`` / ``hint: …`` on stderr and exit 1
(2 for a ``ConfigError``), with a traceback only under ``--debug``.
Reads print tables; ``--json`` prints JSON to stdout and nothing else.
Text that came from the daemon (and so maybe from a peer or a job) is shown
through ``render.untrusted``/``render.safe_text``: never as markup, never with
raw escape sequences; error messages included.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console

from maskd import render
from maskd.client import Client
from maskd.paths import find_socket
from maskd.rpc import maskd_version
from protocol.errors import ConfigError, MaskError

# Width of tables when stdout is not a terminal.
PIPE_WIDTH = 200

__all__ = ["main", "MaskGroup", "CliState", "pass_state", "json_option", "print_json"]


@dataclass(frozen=True)
class CliState:
    """Group-level options, handed to every command as ``ctx.obj``."""

    socket: str | None = None
    debug: bool = False

    def connect(self, *, check_version: bool = True) -> Client:
        """A connected SDK client; warns on stderr if the daemon's version differs."""
        client = Client.connect(self.socket)
        if check_version:
            try:
                daemon_version = client.hello().get("version")
            except BaseException:
                client.close()
                raise
            if daemon_version and daemon_version != maskd_version():
                click.echo(
                    f"warning: mask {maskd_version()} is talking to maskd "
                    + render.safe_text(daemon_version, max_chars=render.CELL_MAX_CHARS),
                    err=True,
                )
        return client

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One call on a fresh connection: what most read commands need."""
        with self.connect() as client:
            return client.call(method, params)


pass_state = click.make_pass_decorator(CliState, ensure=True)


def report_error(exc: MaskError, *, debug: bool) -> int:
    """Print a MaskError for people; return the exit code."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    # A daemon's error may quote a peer or a job: shown, never obeyed.
    click.echo(f"error: {render.safe_text(exc.message, multiline=True)}", err=True)
    if exc.hint:
        click.echo(f"hint: {render.safe_text(exc.hint, multiline=True)}", err=True)
    return 2 if isinstance(exc, ConfigError) else 1


class MaskGroup(click.Group):
    """The one place a ``MaskError`` becomes ``error:``/``hint:`` and an exit code.

    Wrapping ``invoke`` covers the group callback, every subcommand and every
    subgroup added later with ``add_command``, so commands stay free of
    try/except boilerplate.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MaskError as exc:
            debug = bool(ctx.params.get("debug")) or (
                isinstance(ctx.obj, CliState) and ctx.obj.debug
            )
            ctx.exit(report_error(exc, debug=debug))


def json_option(func: Any) -> Any:
    """``--json``: machine-readable output on stdout, nothing else."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _console() -> Console:
    """A console on the current sys.stdout (so CliRunner captures it).

    Piped output gets wide lines instead of rich's 80 columns, so that full
    peer ids survive ``mask peers | grep``; $COLUMNS still wins.
    """
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


@click.group(cls=MaskGroup)
@click.option(
    "--socket",
    "socket_path",
    metavar="PATH",
    help="The daemon's RPC socket (default: $MASK_SOCKET, $MASK_DATA_DIR/maskd.sock, "
    "or the default data dir).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(maskd_version(), prog_name="mask")
@click.pass_context
def main(ctx: click.Context, socket_path: str | None, debug: bool) -> None:
    """mask: talk to the local maskd daemon."""
    ctx.obj = CliState(socket=socket_path, debug=debug)


@main.command()
@json_option
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """This node: identity, addresses, peers, uptime, dropped messages."""
    info = state.call("v1.node.info")
    if as_json:
        print_json(info)
    else:
        _console().print(render.node_table(info))


@main.command()
@json_option
@pass_state
def peers(state: CliState, as_json: bool) -> None:
    """Connected peers: address, latency, score and what each offers."""
    peer_list = state.call("v1.peers.list")
    if as_json:
        print_json(peer_list)
    else:
        _console().print(render.peers_table(peer_list))


@main.command()
@json_option
@pass_state
def offers(state: CliState, as_json: bool) -> None:
    """Resource offers this node knows of, with prices (MASK per unit-hour)."""
    offer_list = state.call("v1.offers.list")
    if as_json:
        print_json(offer_list)
    else:
        _console().print(render.offers_table(offer_list, now=time.time()))


@main.command()
@pass_state
def top(state: CliState) -> None:
    """Live view of peers, offers and jobs; m: money (q quits). Waits for the daemon if it is down."""
    from maskd.tui import run_top  # Textual is slow to import; only `top` pays

    run_top(find_socket(state.socket))


# Command groups that live in their own modules.
from maskd.cli_devnet import demo as _demo  # noqa: E402
from maskd.cli_devnet import devnet as _devnet  # noqa: E402
from maskd.cli_gateway import register as _register_gateway  # noqa: E402
from maskd.cli_jobs import register as _register_jobs  # noqa: E402
from maskd.cli_storage import register as _register_storage  # noqa: E402
from maskd.cli_wallet import register as _register_wallet  # noqa: E402
from maskd.cli_zk import register as _register_zk  # noqa: E402

main.add_command(_devnet)
main.add_command(_demo)
_register_storage(main)
_register_jobs(main)
_register_wallet(main)
_register_zk(main)
_register_gateway(main)


if __name__ == "__main__":  # pragma: no cover
    main()
