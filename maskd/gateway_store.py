"""The gateway's SQLite file: every request it has seen, and how far it read the chain.

Like the job and ledger stores: one file per ComputeRequests contract
(``gateway-<address>.db`` under ``<data_dir>/gateway``), WAL with
``synchronous=FULL``, owner-only mode, and every record committed before the
gateway acts on it. A request is ``placing`` in the file before its job is
submitted, and the scan cursor moves only after the records of the blocks it
passes are saved, so a daemon killed at any point neither places a request
twice (a ``placing`` one is looked for among the node's jobs first) nor
forgets one (its blocks are read again; a request already known is ignored).

Records are JSON (``maskd.gateway_core.record_json``: uint256 values as
decimal strings). Blocking: the shell calls it in a worker thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from maskd.gateway_core import RequestRecord, record_from_json, record_json
from scheduler.store import _make_private

__all__ = ["GatewayStore"]

log = logging.getLogger("maskd.gateway")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    record TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_state ON requests (state);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class GatewayStore:
    """Requests by id, and the next block to scan."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        _make_private(self.path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def for_contract(cls, root: Path, contract: str) -> GatewayStore:
        """The store of one ComputeRequests contract (another contract starts afresh)."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(root / f"gateway-{contract.lower()}.db")

    def close(self) -> None:
        self._db.close()

    def save(self, record: RequestRecord) -> None:
        self._db.execute(
            "INSERT INTO requests (request_id, state, record, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET state = excluded.state, "
            "record = excluded.record, updated_at = excluded.updated_at",
            (
                str(record.request_id),
                record.state.value,
                json.dumps(record_json(record), sort_keys=True),
                record.updated_at,
            ),
        )

    def records(self) -> list[RequestRecord]:
        """Every record, oldest request first; an unreadable row is skipped (logged)."""
        out: list[RequestRecord] = []
        for rid, raw in self._db.execute("SELECT request_id, record FROM requests"):
            try:
                out.append(record_from_json(json.loads(raw)))
            except (ValueError, KeyError, TypeError) as e:
                log.error("gateway store: request %s has an unreadable record: %s", rid, e)
        return sorted(out, key=lambda r: r.request_id)

    def has(self, request_id: int) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM requests WHERE request_id = ?", (str(request_id),)
        ).fetchone()
        return row is not None

    def next_block(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'next_block'").fetchone()
        return int(row[0]) if row is not None else None

    def set_next_block(self, block: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('next_block', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(block),),
        )
