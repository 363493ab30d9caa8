"""``mask top``'s money view: balances, channels, vouchers, batches, the chain.

What it shows is ``v1.wallet.balance`` and ``v1.ledger.show`` (docs/ledger.md,
"RPC and the CLI"). Money has no watch events, and a balance costs the daemon
several chain reads, so the app polls the two calls only while this view is
on screen (``TopApp`` owns the polling; this module only draws).

Two layers, like ``widgets``:

- pure row builders (``balance_rows``, ``channel_row``, ``batch_row``,
  ``status_line``, ...) that take daemon dicts and ``now`` and return cells.
  They tolerate missing and odd fields (the daemon may be older or newer);
- ``MoneyPane``, the widgets, updated synchronously by ``MoneyPane.show``.

Nothing from the daemon is trusted for display. Addresses and transaction
hashes are shown short only when they have the shape of one (``0x`` and 40
or 64 hex digits); anything else is shown escaped (``render.untrusted``) and
in red. Error strings quote chain nodes and peers: they go through
``render.safe_text``, so escape sequences show as ``\\x1b`` and never reach
the terminal. Amounts are exact (``maskd.amounts``, integer arithmetic): every
cell shows all the digits in MASK; the balances also show base units.
Tables are bounded (``MAX_ROWS``): a provider with many requesters does not
make the view slow, and the title says how many rows were left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from maskd import render
from maskd.amounts import format_mask, parse_base_units
from maskd.tui.widgets import Cell, KeyedTable

__all__ = [
    "MAX_ROWS",
    "MoneyState",
    "MoneyPane",
    "BalancesTable",
    "ChannelsTable",
    "PendingTable",
    "MissingTable",
    "BatchesTable",
    "address_cell",
    "tx_cell",
    "amount_cell",
    "balance_rows",
    "channel_row",
    "pending_row",
    "missing_row",
    "batch_row",
    "status_line",
    "CHAIN_OFF_TEXT",
]

#: Rows shown per table, at most; the rest are counted in the title.
MAX_ROWS = 500
CHAIN_OFF_TEXT = "no chain (chain.backend = off)"
CHAIN_OFF_HINT = 'payments are off; set [chain] backend = "embedded" or "rpc" in the config'
# Error text in a status line or note: enough to read, bounded.
ERROR_MAX_CHARS = 300

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")

# (row key, label, balance field, what it means)
BALANCES: Sequence[tuple[str, str, str]] = (
    ("wallet", "wallet", "tokens in the account, not deposited"),
    ("deposit", "deposit", "in escrow: pays providers"),
    ("locked", "locked", "being taken back"),
    ("available", "available", "deposit − locked: what providers see"),
    ("stake", "stake", "provider stake"),
    ("earnings", "earnings", "settled, withdrawable"),
    ("owed_to_me", "owed to me", "delivered and vouched for, not yet settled"),
    ("owed_by_me", "owed by me", "this node's vouchers, not yet settled"),
)
# The wire names of BALANCES' row keys, where they differ.
_BALANCE_FIELD = {"wallet": "mask"}

BATCH_STATUS_STYLES: Mapping[str, str] = {
    "planned": "yellow",
    "sent": "yellow",
    "mined": "yellow",
    "final": "green",
    "reverted": "red",
    "dropped": "red",
}


@dataclass(frozen=True, slots=True)
class MoneyState:
    """One poll's outcome, as the app hands it to :meth:`MoneyPane.show`.

    ``errors`` are raw daemon messages (rendered safely by the pane);
    ``chain_off`` means the node runs without a chain; ``unsupported`` means
    the daemon predates ``v1.ledger.show``.
    """

    ledger: Mapping[str, Any] | None = None
    balance: Mapping[str, Any] | None = None
    chain_off: bool = False
    off_hint: str | None = None
    unsupported: bool = False
    errors: tuple[str, ...] = ()


# -- cells (pure) --


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _odd(value: Any) -> Text:
    """A value that is not what the field should hold: shown escaped, in red."""
    if value is None or value == "":
        return Text(render.DASH)
    return render.untrusted(value, max_chars=render.CELL_MAX_CHARS, style="red")


def address_cell(value: Any) -> Text:
    """``0x1234…abcd`` for an address; anything else escaped and red."""
    if isinstance(value, str) and _ADDRESS.fullmatch(value):
        return Text(render.short_id(value, 6, 4))
    return _odd(value)


def tx_cell(value: Any) -> Text:
    """``0x12345678…abcd`` for a transaction hash; "—" before it is known."""
    if isinstance(value, str) and _TX_HASH.fullmatch(value):
        return Text(render.short_id(value, 10, 4))
    return _odd(value)


def _base(value: Any) -> int | None:
    try:
        return parse_base_units(value)
    except ValueError:
        return None


def amount_cell(value: Any) -> Text:
    """``1.5 MASK`` (every digit, exact) for a wire amount; odd values escaped."""
    base = _base(value)
    return Text(format_mask(base)) if base is not None else _odd(value)


def _int_cell(value: Any, *, grouped: bool = False) -> Text:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Text(f"{value:,}" if grouped else str(value))
    return _odd(value)


def _when(at: Any, now: float) -> str:
    """``in 8s`` / ``5m 3s ago`` for a unix time; "—" when there is none."""
    if not _is_number(at) or at <= 0:
        return render.DASH
    if at >= now:
        return f"in {render.format_duration(at - now)}"
    return f"{render.format_duration(now - at)} ago"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    """The mappings in a list from the daemon; anything else is dropped."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def error_text(value: Any) -> str:
    """A daemon or chain error, one line, escaped and bounded."""
    return render.safe_text(value, max_chars=ERROR_MAX_CHARS)


# -- rows (pure) --


def balance_rows(
    balance: Mapping[str, Any] | None, now: float
) -> list[tuple[str, dict[str, Cell]]]:
    """``v1.wallet.balance`` as (key, cells): what, MASK, base units, meaning.

    ``None`` (the balance could not be read) gives the same rows with "—".
    """
    bal = _mapping(balance)
    rows = []
    for key, label, meaning in BALANCES:
        value = bal.get(_BALANCE_FIELD.get(key, key))
        base = _base(value)
        if key == "locked" and base:
            meaning = f"being taken back; reclaimable {_when(bal.get('unlock_at'), now)}"
        rows.append(
            (
                key,
                {
                    "what": Text(label, style="bold"),
                    "mask": Text(format_mask(base)) if base is not None else _odd(value),
                    "base": Text(str(base)) if base is not None else _odd(value),
                    "meaning": Text(meaning, style="dim"),
                },
            )
        )
    return rows


def _unsettled(cumulative: Any, settled: Any) -> Text:
    total, paid = _base(cumulative), _base(settled)
    if total is None or paid is None:
        return Text(render.DASH)
    return Text(format_mask(max(total - paid, 0)), style="bold" if total > paid else "")


def channel_key(channel: Mapping[str, Any]) -> str:
    return f"{channel.get('direction')}/{channel.get('requester')}/{channel.get('provider')}"


def channel_row(channel: Mapping[str, Any]) -> dict[str, Cell]:
    """A channel: ``in`` (a requester owes this node) or ``out`` (this node owes a provider)."""
    direction = channel.get("direction")
    if direction == "in":
        counterparty = channel.get("requester")
    elif direction == "out":
        counterparty = channel.get("provider")
    else:
        counterparty = None
    cumulative, settled = channel.get("cumulative"), channel.get("settled")
    return {
        "dir": Text(direction) if direction in ("in", "out") else _odd(direction),
        "counterparty": address_cell(counterparty),
        "cumulative": amount_cell(cumulative),
        "settled": amount_cell(settled),
        "unsettled": _unsettled(cumulative, settled),
    }


def pending_key(voucher: Mapping[str, Any]) -> str:
    return f"{voucher.get('requester')}/{voucher.get('provider')}"


def pending_row(voucher: Mapping[str, Any]) -> dict[str, Cell]:
    return {
        "requester": address_cell(voucher.get("requester")),
        "provider": address_cell(voucher.get("provider")),
        "cumulative": amount_cell(voucher.get("cumulative")),
    }


def missing_row(job: Mapping[str, Any], now: float) -> dict[str, Cell]:
    """A delivered job whose voucher did not come (``voucher_missing``)."""
    return {
        "job": render.untrusted(render.short_id(job.get("job_id")), max_chars=40),
        "requester": address_cell(job.get("requester")),
        "price": amount_cell(job.get("price")),
        "due": Text(_when(job.get("due_at"), now)),
    }


def batch_row(batch: Mapping[str, Any]) -> dict[str, Cell]:
    """A settlement batch: its transaction, how many vouchers, gas used, status, block."""
    vouchers = batch.get("vouchers")
    if isinstance(vouchers, list):
        vouchers = len(vouchers)
    status = batch.get("status")
    style = BATCH_STATUS_STYLES.get(status) if isinstance(status, str) else None
    error = batch.get("error")
    return {
        "batch": _int_cell(batch.get("id")),
        "tx": tx_cell(batch.get("tx_hash")),
        "vouchers": _int_cell(vouchers),
        "gas": _int_cell(batch.get("gas_used"), grouped=True),
        "status": Text(status, style=style) if style is not None else _odd(status),
        "block": _int_cell(batch.get("block")),
        "error": render.untrusted(error, max_chars=render.CELL_MAX_CHARS, style="red")
        if error
        else Text(render.DASH),
    }


def _batch_order(batch: Mapping[str, Any]) -> int:
    batch_id = batch.get("id")
    return batch_id if isinstance(batch_id, int) and not isinstance(batch_id, bool) else -1


def chain_label(ledger: Mapping[str, Any]) -> str:
    """``chain 31337 (embedded)``, escaped."""
    chain = _mapping(ledger.get("chain"))
    backend, url = chain.get("backend"), chain.get("rpc_url")
    where = backend if not url or url in ("embedded", backend) else f"{backend} {url}"
    chain_id = chain.get("chain_id")
    label = f"chain {chain_id if _is_number(chain_id) else render.DASH}"
    if where:
        label += f" ({where})"
    return render.safe_text(label, max_chars=120)


def status_line(state: MoneyState, now: float) -> Text:
    """The chain's status: ok, retrying (last error, next retry), connecting, or off."""
    if state.unsupported:
        return Text("this daemon has no money view (it predates v1.ledger.show)", style="yellow")
    ledger = _mapping(state.ledger)
    status = _mapping(ledger.get("status"))
    kind = status.get("state")
    if state.chain_off or kind == "off":
        return Text(CHAIN_OFF_TEXT, style="yellow")
    if state.ledger is None:
        return Text("chain status unknown", style="yellow")
    line = Text(chain_label(ledger) + ": ")
    error = status.get("last_error")
    if kind == "ok":
        line.append("ok", style="green")
    elif kind == "retrying":
        attempts = status.get("attempts")
        what = "retrying"
        if isinstance(attempts, int) and not isinstance(attempts, bool):
            what += f" (attempt {attempts})"
        line.append(what, style="bold red")
        if error:
            line.append(": " + error_text(error), style="red")
        retry = status.get("next_retry_at")
        line.append(
            f" — next retry {_when(retry, now)}" if _is_number(retry) else " — retrying now"
        )
    elif kind == "connecting":
        line.append("connecting", style="bold yellow")
        if error:
            line.append(": " + error_text(error), style="yellow")
    else:
        line.append(error_text(kind if kind is not None else render.DASH), style="yellow")
    return line


def bounded(items: list[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], int]:
    """At most ``MAX_ROWS`` items (rows are built for these only), and how many there were."""
    return items[:MAX_ROWS], len(items)


# -- widgets --


class MoneyTable(KeyedTable):
    """A money table: a proper plural, and a title that counts rows left out."""

    PLURAL = ""
    total: int | None = None

    def show_rows(self, rows: Iterable[tuple[str, dict[str, Cell]]], total: int) -> None:
        """Show ``rows`` (already bounded), out of ``total``."""
        self.total = total
        self.reconcile(rows)
        self._update_title()

    def _update_title(self) -> None:
        count = self.row_count
        total = count if self.total is None else max(self.total, count)
        noun = self.NOUN if total == 1 else self.PLURAL or self.NOUN + "s"
        self.border_title = (
            f"{total} {noun}" if total == count else f"first {count} of {total} {noun}"
        )


class BalancesTable(KeyedTable):
    COLUMNS = (("what", ""), ("mask", "MASK"), ("base", "base units"), ("meaning", ""))
    NOUN = "balance"
    title_text: Text = Text("wallet")

    def _update_title(self) -> None:
        self.border_title = self.title_text


class ChannelsTable(MoneyTable):
    COLUMNS = (
        ("dir", "dir"),
        ("counterparty", "counterparty"),
        ("cumulative", "cumulative"),
        ("settled", "settled"),
        ("unsettled", "unsettled"),
    )
    NOUN = "channel"


class PendingTable(MoneyTable):
    COLUMNS = (("requester", "requester"), ("provider", "provider"), ("cumulative", "cumulative"))
    NOUN = "pending voucher"


class MissingTable(MoneyTable):
    COLUMNS = (("job", "job"), ("requester", "requester"), ("price", "price"), ("due", "due"))
    NOUN = "voucher_missing job"


class BatchesTable(MoneyTable):
    COLUMNS = (
        ("batch", "batch"),
        ("tx", "tx hash"),
        ("vouchers", "vouchers"),
        ("gas", "gas used"),
        ("status", "status"),
        ("block", "block"),
        ("error", "error"),
    )
    NOUN = "batch"
    PLURAL = "batches"
    ORDERED = True  # newest first


class MoneyPane(Vertical):
    """The money view. ``show`` is synchronous and only touches its widgets."""

    def compose(self) -> ComposeResult:
        yield Static("money: loading…", id="money-status")
        yield Static("", id="money-note")
        yield BalancesTable(id="balances")
        yield ChannelsTable(id="channels")
        yield BatchesTable(id="batches")
        with Horizontal(id="vouchers"):
            yield PendingTable(id="pending")
            yield MissingTable(id="missing")

    def on_mount(self) -> None:
        self.query_one("#money-note", Static).display = False

    def show(self, state: MoneyState, now: float) -> None:
        self.query_one("#money-status", Static).update(status_line(state, now))
        note = self.query_one("#money-note", Static)
        tables = [
            self.query_one(f"#{name}") for name in ("balances", "channels", "batches", "vouchers")
        ]
        if state.chain_off or state.unsupported:
            for widget in tables:
                widget.display = False
            hint = state.off_hint or CHAIN_OFF_HINT
            note.update(
                render.untrusted(hint, max_chars=ERROR_MAX_CHARS) if state.chain_off else ""
            )
            note.display = state.chain_off
            return
        for widget in tables:
            widget.display = True
        note.update(Text("\n".join(error_text(e) for e in state.errors), style="red"))
        note.display = bool(state.errors)

        balances = self.query_one(BalancesTable)
        address = _mapping(state.balance).get("address")
        title = Text("wallet ")
        title.append_text(
            Text(address)
            if isinstance(address, str) and _ADDRESS.fullmatch(address)
            else _odd(address)
        )
        if state.balance is None:
            title.append(" (not read)", style="yellow")
        balances.title_text = title
        balances.reconcile(balance_rows(state.balance, now))
        balances._update_title()

        ledger = _mapping(state.ledger)
        channels, total = bounded(_dicts(ledger.get("channels")))
        self.query_one(ChannelsTable).show_rows(
            ((channel_key(c), channel_row(c)) for c in channels), total
        )
        pending, total = bounded(_dicts(ledger.get("pending_vouchers")))
        self.query_one(PendingTable).show_rows(
            ((pending_key(v), pending_row(v)) for v in pending), total
        )
        missing, total = bounded(_dicts(ledger.get("missing")))
        self.query_one(MissingTable).show_rows(
            ((str(m.get("job_id")), missing_row(m, now)) for m in missing), total
        )
        # newest first, so the bound keeps the newest
        batches = sorted(_dicts(ledger.get("batches")), key=_batch_order, reverse=True)
        batches, total = bounded(batches)
        self.query_one(BatchesTable).show_rows(
            ((str(b.get("id")), batch_row(b)) for b in batches), total
        )
