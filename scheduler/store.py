"""The job store: SQLite, one file, both roles (requester and provider).

Every transition is written, in one transaction with ``synchronous=FULL``,
*before* the caller acts on it (DESIGN.md §5): :meth:`JobStore.transition`
checks the edge with :func:`scheduler.jobstate.transition`, updates the job
row, appends to the ``transitions`` log, optionally appends to ``owed``, and
only then returns the new row. A crash between "persisted" and "acted" is
recovered by :meth:`JobStore.open_jobs` on restart; a crash before the commit
leaves the old state, and the caller never acted on the new one.

``transitions`` and ``owed`` are append-only (triggers refuse UPDATE and
DELETE). ``owed`` has ``UNIQUE(job_id)``: however often a result is replayed or
a restart re-verifies it, one job is owed at most once.

The store is synchronous and blocking. The trio shells call it through
``trio.to_thread.run_sync`` with a ``CapacityLimiter(1)`` (``scheduler.market``);
the connection is opened with ``check_same_thread=False`` for that reason,
and the limiter is what serialises access.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import JobError
from scheduler.jobstate import TERMINAL_STATES, JobEvent, JobState, transition
from scheduler.reputation import Evidence, EvidenceKind

__all__ = [
    "CreateJob",
    "RecordTransition",
    "JobRow",
    "JobStore",
    "OwedEntry",
    "Role",
    "TransitionRow",
    "UnknownJob",
]

Role = str  # "requester" | "provider"
ROLES = frozenset({"requester", "provider"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('requester', 'provider')),
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    agreement BLOB,
    provider_peer TEXT,
    provider_account TEXT,
    price TEXT,
    usage TEXT,
    output_cid TEXT,
    error TEXT,
    explanation TEXT,
    verification TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, role)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    role TEXT NOT NULL,
    from_state TEXT NOT NULL,
    event TEXT NOT NULL,
    to_state TEXT NOT NULL,
    at REAL NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id, role);
CREATE TABLE IF NOT EXISTS owed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    provider_peer TEXT NOT NULL,
    provider_account TEXT NOT NULL,
    amount TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider_account TEXT NOT NULL,
    provider_peer TEXT NOT NULL,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    mode TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_account ON evidence (provider_account);
CREATE TRIGGER IF NOT EXISTS evidence_append_only_u BEFORE UPDATE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
CREATE TRIGGER IF NOT EXISTS transitions_append_only_u BEFORE UPDATE ON transitions
BEGIN SELECT RAISE(ABORT, 'transitions is append-only'); END;
CREATE TRIGGER IF NOT EXISTS transitions_append_only_d BEFORE DELETE ON transitions
BEGIN SELECT RAISE(ABORT, 'transitions is append-only'); END;
CREATE TRIGGER IF NOT EXISTS owed_append_only_u BEFORE UPDATE ON owed
BEGIN SELECT RAISE(ABORT, 'owed is append-only'); END;
CREATE TRIGGER IF NOT EXISTS owed_append_only_d BEFORE DELETE ON owed
BEGIN SELECT RAISE(ABORT, 'owed is append-only'); END;
"""

#: Columns a caller may set with a create or a transition; JSON ones are encoded.
_FIELDS = frozenset(
    {
        "agreement",
        "provider_peer",
        "provider_account",
        "price",
        "usage",
        "output_cid",
        "error",
        "explanation",
        "verification",
    }
)
_JSON_FIELDS = frozenset({"usage", "error", "explanation", "verification"})
#: Columns added after the first release: a database made before gains them at open.
_ADDED_COLUMNS = {"verification": "TEXT"}


class UnknownJob(JobError):
    code = "job_not_found"


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    role: Role
    state: JobState
    spec: dict[str, Any]
    agreement: bytes | None
    provider_peer: str | None
    provider_account: str | None
    price: str | None
    usage: dict[str, Any] | None
    output_cid: str | None
    error: dict[str, Any] | None
    explanation: dict[str, Any] | None
    created_at: float
    updated_at: float
    #: how the result was checked (verify mode zk: each provider's proof verdict)
    verification: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TransitionRow:
    job_id: str
    role: Role
    from_state: JobState
    event: JobEvent
    to_state: JobState
    at: float
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OwedEntry:
    """What a requester owes one provider for one completed job (base units)."""

    job_id: str
    provider_peer: str
    provider_account: str
    amount: str
    recorded_at: float = 0.0


@dataclass(frozen=True, slots=True)
class CreateJob:
    """Command: persist a new job (in ``pending``) before anything is sent for it."""

    job_id: str
    role: Role
    spec: Mapping[str, Any]
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordTransition:
    """Command: persist ``event`` (and ``owed``) before the commands after it run."""

    job_id: str
    role: Role
    event: JobEvent
    fields: Mapping[str, Any] = field(default_factory=dict)
    owed: OwedEntry | None = None
    reason: str | None = None
    #: what this transition showed about a provider (scheduler.reputation),
    #: written in the same transaction
    evidence: tuple[Evidence, ...] = ()


class JobStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        _make_private(self.path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes ---------------------------------------------------------------

    def create(
        self, job_id: str, *, role: Role, spec: Mapping[str, Any], now: float, **fields: Any
    ) -> JobRow:
        """A new job in ``pending``. A job id already stored for this role is refused."""
        _check_role(role)
        cols = _encode_fields(fields)
        names = ["job_id", "role", "state", "spec", "created_at", "updated_at", *cols]
        values = [job_id, role, JobState.PENDING.value, json.dumps(dict(spec)), now, now]
        values += list(cols.values())
        marks = ", ".join("?" * len(names))
        with self._tx():
            try:
                self._db.execute(f"INSERT INTO jobs ({', '.join(names)}) VALUES ({marks})", values)
            except sqlite3.IntegrityError:
                raise JobError(
                    f"job {job_id} already exists as {role}", code="job_exists"
                ) from None
        return self.get(job_id, role=role)

    def transition(
        self,
        job_id: str,
        event: JobEvent,
        *,
        role: Role,
        now: float,
        owed: OwedEntry | None = None,
        reason: str | None = None,
        evidence: tuple[Evidence, ...] = (),
        **fields: Any,
    ) -> JobRow:
        """Apply ``event``, persist it (row, log, ``owed`` and ``evidence`` if given)
        and return the row.

        ``reason`` is kept in the log only (why a provider was replaced, say).

        Raises IllegalTransition for an edge the table lacks (nothing written)
        and JobError(code="already_owed") when ``owed`` names a job already owed.
        """
        _check_role(role)
        cols = _encode_fields(fields)
        with self._tx():
            row = self._db.execute(
                "SELECT state FROM jobs WHERE job_id = ? AND role = ?", (job_id, role)
            ).fetchone()
            if row is None:
                raise UnknownJob(f"no {role} job {job_id}")
            before = JobState(row[0])
            after = transition(before, JobEvent(event))
            sets = ", ".join(f"{c} = ?" for c in ["state", "updated_at", *cols])
            self._db.execute(
                f"UPDATE jobs SET {sets} WHERE job_id = ? AND role = ?",
                [after.value, now, *cols.values(), job_id, role],
            )
            log_fields = {k: v for k, v in fields.items() if k != "agreement"}
            if reason is not None:
                log_fields["reason"] = reason
            self._db.execute(
                "INSERT INTO transitions (job_id, role, from_state, event, to_state, at, fields)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, role, before.value, event, after.value, now, json.dumps(log_fields)),
            )
            if owed is not None:
                try:
                    self._db.execute(
                        "INSERT INTO owed (job_id, provider_peer, provider_account, amount,"
                        " recorded_at) VALUES (?, ?, ?, ?, ?)",
                        (owed.job_id, owed.provider_peer, owed.provider_account, owed.amount, now),
                    )
                except sqlite3.IntegrityError:
                    raise JobError(
                        f"job {owed.job_id} is already owed", code="already_owed"
                    ) from None
            for e in evidence:
                self._db.execute(
                    "INSERT INTO evidence (provider_account, provider_peer, job_id, kind, mode,"
                    " detail, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        e.provider_account,
                        e.provider_peer,
                        e.job_id,
                        e.kind.value,
                        e.mode,
                        e.detail,
                        e.at,
                    ),
                )
        return self.get(job_id, role=role)

    def update(self, job_id: str, *, role: Role, now: float, **fields: Any) -> JobRow:
        """Set fields without a state change (an explanation refreshed while pending)."""
        cols = _encode_fields(fields)
        if cols:
            sets = ", ".join(f"{c} = ?" for c in ["updated_at", *cols])
            with self._tx():
                cur = self._db.execute(
                    f"UPDATE jobs SET {sets} WHERE job_id = ? AND role = ?",
                    [now, *cols.values(), job_id, role],
                )
                if cur.rowcount == 0:
                    raise UnknownJob(f"no {role} job {job_id}")
        return self.get(job_id, role=role)

    # --- reads ------------------------------------------------------------------

    def get(self, job_id: str, *, role: Role) -> JobRow:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ? AND role = ?", (job_id, role)
        ).fetchone()
        if row is None:
            raise UnknownJob(f"no {role} job {job_id}")
        return _row(row)

    def jobs(self, *, role: Role | None = None) -> list[JobRow]:
        sql, args = f"SELECT {_COLUMNS} FROM jobs", ()
        if role is not None:
            sql, args = sql + " WHERE role = ?", (role,)
        return [_row(r) for r in self._db.execute(sql + " ORDER BY created_at, job_id", args)]

    def open_jobs(self, *, role: Role | None = None) -> list[JobRow]:
        """Jobs not in a terminal state: what a restarted daemon must resume."""
        return [j for j in self.jobs(role=role) if j.state not in TERMINAL_STATES]

    def transitions(self, job_id: str, *, role: Role) -> list[TransitionRow]:
        rows = self._db.execute(
            "SELECT job_id, role, from_state, event, to_state, at, fields FROM transitions"
            " WHERE job_id = ? AND role = ? ORDER BY id",
            (job_id, role),
        )
        return [
            TransitionRow(
                r[0], r[1], JobState(r[2]), JobEvent(r[3]), JobState(r[4]), r[5], json.loads(r[6])
            )
            for r in rows
        ]

    def owed(self, *, provider_account: str | None = None) -> list[OwedEntry]:
        sql = "SELECT job_id, provider_peer, provider_account, amount, recorded_at FROM owed"
        args: tuple = ()
        if provider_account is not None:
            sql, args = sql + " WHERE provider_account = ?", (provider_account,)
        return [OwedEntry(*r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def evidence(self, *, provider_account: str | None = None) -> list[Evidence]:
        """Every piece of evidence about providers, oldest first (one account's if given)."""
        sql = "SELECT provider_account, provider_peer, job_id, kind, at, mode, detail FROM evidence"
        args: tuple = ()
        if provider_account is not None:
            sql, args = sql + " WHERE lower(provider_account) = lower(?)", (provider_account,)
        out = []
        for r in self._db.execute(sql + " ORDER BY id", args):
            try:
                kind = EvidenceKind(r[3])
            except ValueError:  # a kind a newer version wrote: skipped, not fatal
                continue
            out.append(Evidence(r[0], r[1], r[2], kind, r[4], r[5], r[6]))
        return out

    def owed_totals(self) -> dict[str, int]:
        """Total owed per provider account, summed exactly in Python (uint256 amounts)."""
        totals: dict[str, int] = {}
        for entry in self.owed():
            totals[entry.provider_account] = totals.get(entry.provider_account, 0) + int(
                entry.amount
            )
        return totals

    # --- helpers ----------------------------------------------------------------

    def apply(self, command: CreateJob | RecordTransition, *, now: float) -> JobRow:
        """Execute a persistence command emitted by a market core."""
        if isinstance(command, CreateJob):
            return self.create(
                command.job_id, role=command.role, spec=command.spec, now=now, **command.fields
            )
        return self.transition(
            command.job_id,
            command.event,
            role=command.role,
            now=now,
            owed=command.owed,
            reason=command.reason,
            evidence=command.evidence,
            **command.fields,
        )

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


_COLUMNS = (
    "job_id, role, state, spec, agreement, provider_peer, provider_account, price, usage,"
    " output_cid, error, explanation, created_at, updated_at, verification"
)


def _make_private(path: str) -> None:
    """The database file exists with mode 0600 before sqlite opens it.

    sqlite gives the ``-wal``, ``-shm`` and ``-journal`` files it creates the
    main file's mode, whatever the umask, so those are 0600 too; files left
    looser by an older version are tightened.
    """
    if path == ":memory:" or path.startswith("file:") or not path:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            if stat.S_IMODE(os.stat(name).st_mode) & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


def _row(r: tuple) -> JobRow:
    def js(v: str | None) -> Any:
        return None if v is None else json.loads(v)

    return JobRow(
        job_id=r[0],
        role=r[1],
        state=JobState(r[2]),
        spec=json.loads(r[3]),
        agreement=r[4],
        provider_peer=r[5],
        provider_account=r[6],
        price=r[7],
        usage=js(r[8]),
        output_cid=r[9],
        error=js(r[10]),
        explanation=js(r[11]),
        created_at=r[12],
        updated_at=r[13],
        verification=js(r[14]),
    )


def _encode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ValueError(f"unknown job fields: {', '.join(sorted(unknown))}")
    return {
        k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in fields.items()
    }


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be 'requester' or 'provider', not {role!r}")
