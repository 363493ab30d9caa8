"""Peers this node was connected to, kept across restarts (``<data_dir>/peers.json``).

A node restarted on a new port, or whose bootstrap peers moved, would
otherwise know nobody, and its old peers would keep dialling an address that
is gone. At start the node hands the remembered peers to the mesh, which
dials them with back-off; while running it records who it is connected to.

The file is a cache: a missing, unreadable or malformed file means "no
peers" (with a warning), never a failed start. Entries not seen for
``MAX_AGE_S`` are dropped, and at most ``LIMIT`` are kept, most recent first.
Written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from storage.fsutil import write_atomic

log = logging.getLogger("maskd.node")

FILE_NAME = "peers.json"
MAX_AGE_S = 7 * 24 * 3600.0
LIMIT = 128
MAX_ADDRS = 8
REFRESH_S = 600.0  # how stale a saved last_seen may get when nothing else changed


def load(path: Path, now: float) -> list[dict]:
    """The remembered entries ``{"peer_id", "addrs", "last_seen"}``, fresh ones only."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s (%s); starting with no remembered peers", path, exc)
        return []
    entries = raw.get("peers") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        log.warning("ignoring %s: no peer list in it", path)
        return []
    out = []
    for e in entries:
        if (
            isinstance(e, dict)
            and isinstance(e.get("peer_id"), str)
            and isinstance(e.get("addrs"), list)
            and all(isinstance(a, str) for a in e["addrs"])
            and isinstance(e.get("last_seen"), (int, float))
            and now - e["last_seen"] <= MAX_AGE_S
        ):
            out.append(
                {
                    "peer_id": e["peer_id"],
                    "addrs": e["addrs"][:MAX_ADDRS],
                    "last_seen": e["last_seen"],
                }
            )
    return _trim(out)


def merge(
    previous: Iterable[dict], connected: Iterable[tuple[str, Sequence[str]]], now: float
) -> list[dict]:
    """``previous`` updated with the peers connected now (seen at ``now``)."""
    by_id = {e["peer_id"]: dict(e) for e in previous}
    for peer_id, addrs in connected:
        by_id[peer_id] = {"peer_id": peer_id, "addrs": list(addrs)[:MAX_ADDRS], "last_seen": now}
    return _trim([e for e in by_id.values() if now - e["last_seen"] <= MAX_AGE_S])


def needs_save(saved: list[dict], entries: list[dict], saved_at: float, now: float) -> bool:
    """Write when who we know or their addresses changed; a mere ``last_seen``
    refresh only every ``REFRESH_S`` (a write is an fsync)."""

    def shape(es: list[dict]) -> set[tuple[str, tuple[str, ...]]]:
        return {(e["peer_id"], tuple(e["addrs"])) for e in es}

    return shape(saved) != shape(entries) or now - saved_at >= REFRESH_S


def save(path: Path, entries: list[dict]) -> None:
    data = json.dumps({"version": 1, "peers": entries}, indent=1).encode()
    write_atomic(str(path), data)


def _trim(entries: list[dict]) -> list[dict]:
    entries.sort(key=lambda e: (-e["last_seen"], e["peer_id"]))
    return entries[:LIMIT]
