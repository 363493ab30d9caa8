"""Tables keyed by id, so live updates change rows in place.

A ``KeyedTable`` is a ``DataTable`` whose rows are addressed by a stable key
(peer id, offer id, role/job id): events upsert or remove one row, snapshots
reconcile the whole table, and the cursor and scroll position survive both.
Rows are built from daemon dicts by pure functions, so formatting is tested
without an app.

Every cell is text from a stranger (a peer's GPU name and addresses, a job's
name and error), and a DataTable reads ``str`` cells as markup: ``[/x]``
would break rendering and ESC/OSC/bidi characters would reach the terminal.
So job cells are ``render.untrusted`` ``Text`` (which also carries the
state's colour), and peer and offer cells are ``render.safe_markup`` strings:
markup that shows exactly ``render.safe_text`` of the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist

from maskd import render

__all__ = [
    "KeyedTable",
    "PeersTable",
    "OffersTable",
    "JobsTable",
    "peer_row",
    "offer_row",
    "job_key",
    "job_row",
    "job_sort_key",
]

# A cell: markup that shows a value literally (render.safe_markup), or Text.
Cell = str | Text


def _markup(value: Any) -> str:
    return render.safe_markup(value, max_chars=render.CELL_MAX_CHARS)


def _text(value: Any, style: str = "") -> Text:
    return render.untrusted(value, max_chars=render.CELL_MAX_CHARS, style=style)


def peer_row(peer: Mapping[str, Any]) -> dict[str, str]:
    return {
        "peer": _markup(render.short_id(peer.get("peer_id"))),
        "address": _markup(render.first_addr(peer.get("addrs"))),
        "latency": _markup(render.format_latency(peer.get("latency_ms"))),
        "score": _markup(render.format_score(peer.get("score"))),
        "offers": _markup(render.offer_summary(peer.get("offer"))),
    }


def offer_row(offer: Mapping[str, Any], now: float) -> dict[str, str]:
    prices = offer.get("prices")
    return {
        "offer": _markup(render.short_id(offer.get("offer_id"), 6, 4)),
        "peer": _markup(render.short_id(offer.get("peer_id"))),
        "cpu": _markup(offer.get("cpu", render.DASH)),
        "mem": _markup(render.format_mb(offer.get("memory_mb"))),
        "disk": _markup(render.format_mb(offer.get("disk_mb"))),
        "gpus": _markup(render.gpus_summary(offer.get("gpus"))),
        "executors": _markup(render.executors_summary(offer.get("executors"))),
        "price": _markup(
            render.format_price(
                prices.get("cpu_core_hour") if isinstance(prices, Mapping) else None
            )
        ),
        "expires": _markup(render.format_expires_in(offer.get("expires_at"), now)),
    }


def job_key(job_id: Any, role: Any) -> str:
    """Jobs are keyed by role too: a node may both request and run the same job."""
    return f"{role}/{job_id}"


def job_sort_key(job: Mapping[str, Any]) -> tuple[float, str]:
    """Sorts oldest first; the jobs table shows the reverse (newest first)."""
    created = job.get("created_at")
    if not isinstance(created, int | float) or isinstance(created, bool):
        created = 0.0
    return (float(created), job_key(job.get("job_id"), job.get("role")))


def job_row(job: Mapping[str, Any]) -> dict[str, Cell]:
    usage = job.get("usage") if isinstance(job.get("usage"), Mapping) else {}
    error = job.get("error") if isinstance(job.get("error"), Mapping) else {}
    state = job.get("state")
    return {
        "job": _text(render.short_id(job.get("job_id"))),
        "role": _text(job.get("role") or render.DASH),
        "name": _text(job.get("name") or render.DASH),
        "state": _text(state or render.DASH, style=render.job_state_style(state)),
        "provider": _text(render.short_id(job.get("provider"))),
        "price": _text(render.format_price(job.get("price"))),
        "wall": _text(render.format_wall_ms(usage.get("wall_ms"))),
        "error": _text(error.get("code") or render.DASH),
    }


class KeyedTable(DataTable):
    """A DataTable addressed by row key; subclasses declare ``COLUMNS``."""

    # (column key, label)
    COLUMNS: Sequence[tuple[str, str]] = ()
    NOUN = "row"
    # Reconcile keeps the order of the rows it is given (JobsTable: newest first).
    ORDERED = False

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)
        self._update_title()

    def keys(self) -> list[str]:
        """Row keys in the order they are shown."""
        return [str(row.key.value) for row in self.ordered_rows]

    def upsert(self, key: str, cells: Mapping[str, Cell]) -> None:
        """Add the row, or change only the cells that differ."""
        if key in self.rows:
            for column, value in cells.items():
                if self.get_cell(key, column) != value:
                    self.update_cell(key, column, value, update_width=True)
        else:
            self.add_row(*(cells.get(column, "") for column, _ in self.COLUMNS), key=key)
            self._update_title()

    def remove(self, key: str) -> bool:
        if key not in self.rows:
            return False
        self.remove_row(key)
        self._update_title()
        return True

    def reconcile(self, rows: Iterable[tuple[str, Mapping[str, Cell]]]) -> None:
        """Make the table show exactly ``rows``, touching only what changed.

        New rows go at the end, unless the table is ``ORDERED``: then the rows
        are shown in the order given, and the cursor stays on its row.
        """
        wanted = dict(rows)
        for key in self.keys():
            if key not in wanted:
                self.remove(key)
        for key, cells in wanted.items():
            self.upsert(key, cells)
        if self.ORDERED and self.keys() != list(wanted):
            self._rebuild(list(wanted))

    def _rebuild(self, order: list[str]) -> None:
        # DataTable can only append rows, so a row that belongs above others
        # (a new job, newest first) means adding them all again, in order. It
        # happens when a row appears, not when cells change.
        cells = {key: self.get_row(key) for key in order}
        selected: str | None = None
        if self.row_count:
            try:
                selected = str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
            except CellDoesNotExist:
                selected = None
        self.clear()
        for key in order:
            self.add_row(*cells[key], key=key)
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected))

    def _update_title(self) -> None:
        count = self.row_count
        self.border_title = f"{count} {self.NOUN}" + ("" if count == 1 else "s")


class PeersTable(KeyedTable):
    COLUMNS = (
        ("peer", "peer"),
        ("address", "address"),
        ("latency", "latency"),
        ("score", "score"),
        ("offers", "offers"),
    )
    NOUN = "peer"


class OffersTable(KeyedTable):
    COLUMNS = (
        ("offer", "offer"),
        ("peer", "peer"),
        ("cpu", "cpu"),
        ("mem", "mem"),
        ("disk", "disk"),
        ("gpus", "gpus"),
        ("executors", "executors"),
        ("price", "MASK/cpu-h"),
        ("expires", "expires in"),
    )
    NOUN = "offer"


class JobsTable(KeyedTable):
    COLUMNS = (
        ("job", "job"),
        ("role", "role"),
        ("name", "name"),
        ("state", "state"),
        ("provider", "provider"),
        ("price", "MASK"),
        ("wall", "wall time"),
        ("error", "error"),
    )
    NOUN = "job"
    ORDERED = True
