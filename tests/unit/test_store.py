"""The job store: transitions persist before they return, illegal ones write nothing,
a job is owed once, and a reopened store resumes its open jobs."""

import sqlite3

import pytest

from protocol.errors import JobError
from scheduler.jobstate import IllegalTransition, JobEvent, JobState
from scheduler.store import JobStore, OwedEntry, UnknownJob

J1, J2 = "a" * 64, "b" * 64
SPEC = {"name": "hello", "executor": "wasm"}


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "maskd.db")
    yield s
    s.close()


def test_pragmas_are_wal_and_full_sync(store):
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_create_starts_pending_and_transition_is_visible_to_another_connection(store):
    store.create(J1, role="requester", spec=SPEC, now=1.0)
    row = store.transition(
        J1, JobEvent.MATCHED, role="requester", now=2.0, provider_peer="P", price="10"
    )
    assert row.state is JobState.MATCHED and row.provider_peer == "P" and row.price == "10"
    # committed, not just in this connection's cache
    other = sqlite3.connect(store.path)
    assert other.execute("SELECT state FROM jobs").fetchone()[0] == "matched"
    other.close()
    log = store.transitions(J1, role="requester")
    assert [(t.from_state, t.event, t.to_state) for t in log] == [
        (JobState.PENDING, JobEvent.MATCHED, JobState.MATCHED)
    ]
    assert log[0].fields == {"provider_peer": "P", "price": "10"}


def test_illegal_transition_is_refused_and_writes_nothing(store):
    store.create(J1, role="requester", spec=SPEC, now=1.0)
    with pytest.raises(IllegalTransition):
        store.transition(J1, JobEvent.VERIFIED, role="requester", now=2.0, output_cid="x")
    row = store.get(J1, role="requester")
    assert row.state is JobState.PENDING and row.output_cid is None
    assert store.transitions(J1, role="requester") == []


def test_unknown_job_and_duplicate_create(store):
    with pytest.raises(UnknownJob):
        store.transition(J1, JobEvent.MATCHED, role="requester", now=1.0)
    store.create(J1, role="requester", spec=SPEC, now=1.0)
    with pytest.raises(JobError) as exc:
        store.create(J1, role="requester", spec=SPEC, now=1.0)
    assert exc.value.code == "job_exists"
    # the same job id may exist once per role (a node that buys from itself)
    store.create(J1, role="provider", spec=SPEC, now=1.0)


def _complete(store, job_id, owed):
    for event in (JobEvent.MATCHED, JobEvent.STARTED, JobEvent.RESULT_RECEIVED):
        store.transition(job_id, event, role="requester", now=2.0)
    return store.transition(job_id, JobEvent.VERIFIED, role="requester", now=3.0, owed=owed)


def test_a_job_is_owed_once(store):
    entry = OwedEntry(J1, "P", "0xabc", "100")
    store.create(J1, role="requester", spec=SPEC, now=1.0)
    assert _complete(store, J1, entry).state is JobState.COMPLETED
    # a second completion path for the same job (a replay, a second provider) is refused
    store.create(J1, role="provider", spec=SPEC, now=1.0)
    for event in (JobEvent.MATCHED, JobEvent.STARTED, JobEvent.RESULT_RECEIVED):
        store.transition(J1, event, role="provider", now=2.0)
    with pytest.raises(JobError) as exc:
        store.transition(
            J1, JobEvent.VERIFIED, role="provider", now=3.0, owed=OwedEntry(J1, "Q", "0xdef", "5")
        )
    assert exc.value.code == "already_owed"
    # ... and the transition that carried it rolled back with it
    assert store.get(J1, role="provider").state is JobState.VERIFYING
    assert [(e.job_id, e.amount) for e in store.owed()] == [(J1, "100")]
    assert store.owed_totals() == {"0xabc": 100}


def test_owed_and_transitions_are_append_only(store):
    store.create(J1, role="requester", spec=SPEC, now=1.0)
    _complete(store, J1, OwedEntry(J1, "P", "0xabc", "100"))
    for sql in (
        "UPDATE owed SET amount = '1'",
        "DELETE FROM owed",
        "UPDATE transitions SET event = 'x'",
        "DELETE FROM transitions",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store._db.execute(sql)


def test_owed_totals_are_exact_beyond_64_bits(store):
    big = str(2**200)
    for job in (J1, J2):
        store.create(job, role="requester", spec=SPEC, now=1.0)
        _complete(store, job, OwedEntry(job, "P", "0xabc", big))
    assert store.owed_totals() == {"0xabc": 2 * 2**200}


def test_reopen_resumes_open_jobs(tmp_path):
    path = tmp_path / "maskd.db"
    with JobStore(path) as s:
        s.create(J1, role="requester", spec=SPEC, now=1.0)
        s.transition(J1, JobEvent.MATCHED, role="requester", now=2.0, provider_peer="P")
        s.create(J2, role="requester", spec=SPEC, now=1.0)
        s.transition(J2, JobEvent.CANCELLED, role="requester", now=2.0)
    with JobStore(path) as s:
        open_jobs = s.open_jobs(role="requester")
        assert [(j.job_id, j.state, j.provider_peer) for j in open_jobs] == [
            (J1, JobState.MATCHED, "P")
        ]
        assert s.open_jobs(role="provider") == []
        assert s.get(J1, role="requester").spec == SPEC


def test_update_sets_fields_without_a_transition(store):
    store.create(J1, role="requester", spec=SPEC, now=1.0)
    row = store.update(J1, role="requester", now=5.0, explanation={"text": "no quotes yet"})
    assert row.explanation == {"text": "no quotes yet"} and row.state is JobState.PENDING
    assert store.transitions(J1, role="requester") == []
    with pytest.raises(ValueError, match="unknown job fields"):
        store.update(J1, role="requester", now=5.0, state="completed")


def test_a_database_from_before_the_verification_column_gains_it(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (job_id TEXT NOT NULL, role TEXT NOT NULL, state TEXT NOT NULL,"
        " spec TEXT NOT NULL, agreement BLOB, provider_peer TEXT, provider_account TEXT,"
        " price TEXT, usage TEXT, output_cid TEXT, error TEXT, explanation TEXT,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (job_id, role));"
        f"INSERT INTO jobs VALUES ('{J1}', 'requester', 'pending', '{{}}', NULL, NULL, NULL,"
        " NULL, NULL, NULL, NULL, NULL, 1.0, 1.0);"
    )
    old.close()
    with JobStore(path) as store:
        assert store.get(J1, role="requester").verification is None
        verdict = {"mode": "zk", "attempts": [{"valid": True, "backend": "native"}]}
        row = store.update(J1, role="requester", now=2.0, verification=verdict)
        assert row.verification == verdict
    with JobStore(path) as store:  # opened again: nothing to add, nothing lost
        assert store.get(J1, role="requester").verification == verdict
