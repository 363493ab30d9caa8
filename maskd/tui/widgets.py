"""Tables keyed by id, so live updates change rows in place.

A ``KeyedTable`` is a ``DataTable`` whose rows are addressed by a stable key
(peer id, offer id): events upsert or remove one row, snapshots reconcile the
whole table, and the cursor and scroll position survive both. Rows are built
from daemon dicts by pure functions, so formatting is tested without an app.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from textual.widgets import DataTable

from maskd import render

__all__ = ["KeyedTable", "PeersTable", "OffersTable", "peer_row", "offer_row"]


def peer_row(peer: Mapping[str, Any]) -> dict[str, str]:
    return {
        "peer": render.short_id(peer.get("peer_id")),
        "address": render.first_addr(peer.get("addrs")),
        "latency": render.format_latency(peer.get("latency_ms")),
        "score": render.format_score(peer.get("score")),
        "offers": render.offer_summary(peer.get("offer")),
    }


def offer_row(offer: Mapping[str, Any], now: float) -> dict[str, str]:
    prices = offer.get("prices")
    executors = offer.get("executors")
    return {
        "offer": render.short_id(offer.get("offer_id"), 6, 4),
        "peer": render.short_id(offer.get("peer_id")),
        "cpu": str(offer.get("cpu", render.DASH)),
        "mem": render.format_mb(offer.get("memory_mb")),
        "disk": render.format_mb(offer.get("disk_mb")),
        "gpus": render.gpus_summary(offer.get("gpus")),
        "executors": ", ".join(map(str, executors))
        if isinstance(executors, list) and executors
        else render.DASH,
        "price": render.format_price(
            prices.get("cpu_core_hour") if isinstance(prices, Mapping) else None
        ),
        "expires": render.format_expires_in(offer.get("expires_at"), now),
    }


class KeyedTable(DataTable):
    """A DataTable addressed by row key; subclasses declare ``COLUMNS``."""

    # (column key, label)
    COLUMNS: Sequence[tuple[str, str]] = ()
    NOUN = "row"

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for key, label in self.COLUMNS:
            self.add_column(label, key=key)
        self._update_title()

    def keys(self) -> list[str]:
        return [str(key.value) for key in self.rows]

    def upsert(self, key: str, cells: Mapping[str, str]) -> None:
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

    def reconcile(self, rows: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        """Make the table show exactly ``rows``, touching only what changed."""
        wanted = dict(rows)
        for key in self.keys():
            if key not in wanted:
                self.remove(key)
        for key, cells in wanted.items():
            self.upsert(key, cells)

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
