"""``mask gateway``: the DApp requests this node answers on chain ([gateway]).

One RPC call (``v1.gateway.show``) and a table: the gateway's state (which
ComputeRequests contract, how far it has read the chain, the circuits it can
place) and each request, newest first, with its state and why (skipped,
failed or expired requests carry a reason). Every field came from the daemon
and most from a stranger's transaction (the input CID, the requester, the
reason a chain node gave): each is shown through ``render.untrusted``, never
as markup and never with raw escape sequences. The table builder is pure
(``now`` is passed in) and tolerates missing or odd fields.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text

from maskd import render

__all__ = ["gateway_view", "register"]

pass_state = click.pass_obj  # the group's CliState


def _cell(value: Any, max_chars: int = render.CELL_MAX_CHARS, style: str = "") -> Text:
    if value is None or value == "":
        return Text(render.DASH)
    return render.untrusted(value, max_chars=max_chars, style=style)


_STATE_STYLE = {
    "fulfilled": "green",
    "failed": "red",
    "expired": "yellow",
    "skipped": "dim",
}


def gateway_view(info: Mapping[str, Any], now: float) -> Group | Text:
    """The gateway's summary and its requests, for people."""
    if not isinstance(info, Mapping) or not info.get("enabled"):
        return Text(
            "the gateway is off on this node ([gateway] enabled = false; docs/zkp.md, "
            '"DApps as requesters")'
        )
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    state = info.get("state")
    error = info.get("last_error")
    head.add_row("state", _cell(f"{state}: {error}" if error else state, max_chars=300))
    head.add_row("contract", _cell(info.get("contract")))
    head.add_row("chain", _cell(info.get("chain_id")))
    head.add_row("account (pays gas)", _cell(info.get("account")))
    head.add_row("next block", _cell(info.get("next_block")))
    head.add_row("open", _cell(f"{info.get('open')} of {info.get('max_open')}"))
    head.add_row("min payment", _cell(f"{render.format_price(info.get('min_payment'))} MASK"))
    circuits = info.get("circuits") if isinstance(info.get("circuits"), list) else []
    names = ", ".join(
        f"{c.get('name')} ({render.short_id(c.get('circuit_id'))})"
        for c in circuits
        if isinstance(c, Mapping)
    )
    head.add_row("circuits", _cell(names or "none", max_chars=400))
    for problem in info.get("circuit_problems") or []:
        head.add_row("circuit problem", _cell(problem, max_chars=300, style="yellow"))

    table = Table(title=f"requests ({info.get('total', 0)})", title_justify="left")
    for column in ("ID", "STATE", "CIRCUIT", "PAYMENT", "DEADLINE", "JOB", "PROVIDER"):
        table.add_column(column, no_wrap=True)  # short: the detail column gives way
    table.add_column("DETAIL", overflow="fold")
    requests = info.get("requests") if isinstance(info.get("requests"), list) else []
    for r in requests:
        if not isinstance(r, Mapping):
            continue
        state = str(r.get("state", ""))
        table.add_row(
            _cell(r.get("request_id"), max_chars=24),
            _cell(state, style=_STATE_STYLE.get(state, "")),
            _cell(r.get("circuit") or render.short_id(r.get("circuit_id"))),
            _cell(render.format_price(r.get("payment"))),
            _cell(render.format_expires_in(r.get("deadline"), now)),
            _cell(render.short_id(r.get("job_id"))),
            _cell(render.short_id(r.get("provider"), head=10)),
            _cell(_detail(r), max_chars=160),
        )
    return Group(head, table)


def _detail(r: Mapping[str, Any]) -> str:
    """Why (a reason and its words), the fulfil transaction, or the input CID."""
    reason, detail = r.get("reason"), r.get("detail")
    if reason or detail:
        return f"{reason}: {detail}" if reason and detail else str(reason or detail)
    if r.get("tx_hash"):
        return f"tx {r.get('tx_hash')}"
    return f"input {r.get('input_cid')}"


@click.command("gateway")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Show at most this many requests, newest first.")  # fmt: skip
@pass_state
def gateway(state: Any, as_json: bool, limit: int) -> None:
    """DApp requests this node answers on chain: each one's state and why."""
    from maskd.cli import _console, print_json  # the group's module (imports this one)

    info = state.call("v1.gateway.show", {"limit": limit})
    if as_json:
        print_json(info)
        return
    _console().print(gateway_view(info, time.time()))


def register(main: click.Group) -> None:
    main.add_command(gateway)
