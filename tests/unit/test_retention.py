"""maskd.retention.plan_sweep: which private job files go, rule by rule (pure, no disk)."""

from __future__ import annotations

from maskd.retention import (
    PLACEMENT_GRACE_S,
    Area,
    JobRef,
    Reason,
    RetentionPolicy,
    StoredFile,
    cache_key,
    plan_sweep,
)
from scheduler.jobstate import JobState
from scheduler.store import JobRow

H = 3600.0
POLICY = RetentionPolicy(result_s=72 * H, bundle_s=1 * H)
NOW = 1_000_000.0
START = NOW - 10 * H  # this process started ten hours ago
LONG_AGO = NOW - 1000 * H
REQ, OTHER = "12D3KooRequester", "12D3KooSomeoneElse"


def requester_job(job_id: str, spec_cid: str, ended_at=None, output_cid=None) -> JobRef:
    return JobRef(job_id, "requester", ended_at, spec_cid, output_cid)


def provider_job(job_id: str, spec_cid="bafyspec", ended_at=None, output_cid=None, peer=REQ):
    return JobRef(job_id, "provider", ended_at, spec_cid, output_cid, peer)


def file(area: Area, name: str, mtime: float = LONG_AGO) -> StoredFile:
    return StoredFile(area, name, mtime, f"/x/{name}")


def plan(jobs, files, *, now=NOW, policy=POLICY, in_use=frozenset()) -> dict[str, Reason]:
    done = plan_sweep(jobs, files, now, policy, started_at=START, in_use=in_use)
    return {d.file.name: d.reason for d in done}


# --- the requester's bundles ---------------------------------------------------------


def test_a_bundle_is_kept_while_any_job_using_it_is_not_terminal():
    jobs = [
        requester_job("a", "bafyspec", ended_at=LONG_AGO),
        requester_job("b", "bafyspec"),  # pending, or being served to a replacement provider
    ]
    assert plan(jobs, [file(Area.BUNDLE, "bafyspec")]) == {}


def test_a_bundle_goes_once_the_last_job_using_it_ended_a_retention_period_ago():
    bundle = file(Area.BUNDLE, "bafyspec")
    early = requester_job("a", "bafyspec", ended_at=LONG_AGO)
    late = requester_job("b", "bafyspec", ended_at=NOW - 0.5 * H)
    assert plan([early, late], [bundle]) == {}  # the latest end counts
    assert plan([early, late], [bundle], now=NOW + 0.5 * H) == {"bafyspec": Reason.BUNDLE_EXPIRED}


def test_a_bundle_replaced_by_a_new_submit_is_kept_though_every_recorded_job_expired():
    # the race: a submit with this spec_cid put the bundle in place (fresh mtime)
    # and the sweep read the job rows before the new job's row was written
    old = requester_job("a", "bafyspec", ended_at=LONG_AGO)
    replaced = file(Area.BUNDLE, "bafyspec", mtime=NOW - 1.0)
    assert plan([old], [replaced]) == {}
    assert plan([old], [file(Area.BUNDLE, "bafyspec")]) == {"bafyspec": Reason.BUNDLE_EXPIRED}


def test_a_bundle_no_job_names_goes_after_the_bundle_period_by_its_mtime():
    young = file(Area.BUNDLE, "bafyyoung", mtime=NOW - 0.5 * H)
    old = file(Area.BUNDLE, "bafyold", mtime=NOW - 2 * H)
    assert plan([], [young, old]) == {"bafyold": Reason.ORPHAN_EXPIRED}


def test_nothing_placed_within_the_grace_goes_even_with_zero_retention():
    zero = RetentionPolicy(result_s=0.0, bundle_s=0.0)
    ended = [requester_job("a", "bafyspec", ended_at=NOW - 5.0)]
    fresh = file(Area.BUNDLE, "bafyspec", mtime=NOW - PLACEMENT_GRACE_S + 1)
    assert plan(ended, [fresh], policy=zero) == {}
    assert plan(ended, [fresh], policy=zero, now=NOW + 1) == {"bafyspec": Reason.BUNDLE_EXPIRED}


# --- results -------------------------------------------------------------------------------


def test_a_providers_result_is_kept_for_the_result_period_after_its_job_ended():
    result = file(Area.RESULT, "bafyout")
    ended = provider_job("p", output_cid="bafyout", ended_at=NOW - 71 * H)
    assert plan([ended], [result]) == {}
    assert plan([ended], [result], now=NOW + 1 * H) == {"bafyout": Reason.RESULT_EXPIRED}


def test_a_providers_result_is_kept_while_a_job_naming_it_is_not_terminal():
    # the same output from a new run (deterministic jobs): the old run's expiry
    # must not take the file the new run's requester is about to fetch
    old = provider_job("p1", output_cid="bafyout", ended_at=LONG_AGO)
    sending = provider_job("p2", output_cid="bafyout")  # verifying: the result is on its way
    assert plan([old, sending], [file(Area.RESULT, "bafyout")]) == {}


def test_a_result_a_requester_job_names_is_the_users_output_and_never_goes():
    mine = requester_job("r", "bafyspec", ended_at=LONG_AGO, output_cid="bafyout")
    also_served = provider_job("p", output_cid="bafyout", ended_at=LONG_AGO)
    assert plan([mine, also_served], [file(Area.RESULT, "bafyout")], now=NOW + 1e6 * H) == {}


def test_a_result_no_job_names_goes_after_the_result_period_by_its_mtime():
    # a run cancelled as it finished: its CAR was stored, its row never named it
    young = file(Area.RESULT, "bafyyoung", mtime=NOW - 71 * H)
    old = file(Area.RESULT, "bafyold", mtime=NOW - 73 * H)
    assert plan([], [young, old]) == {"bafyold": Reason.ORPHAN_EXPIRED}


# --- the provider's cached bundles and work dirs -----------------------------------------


def test_a_cached_bundle_a_run_holds_is_kept():
    key = cache_key("bafyspec", REQ)
    assert plan([], [file(Area.CACHED_BUNDLE, key)], in_use=frozenset({key})) == {}
    assert plan([], [file(Area.CACHED_BUNDLE, key)]) == {key: Reason.CACHE_IDLE}


def test_a_cached_bundle_is_kept_while_a_job_of_that_requester_and_spec_is_open():
    key = cache_key("bafyspec", REQ)
    cached = file(Area.CACHED_BUNDLE, key)
    assert plan([provider_job("p", peer=REQ)], [cached]) == {}
    # the same spec from someone else is another entry: it does not keep this one
    assert plan([provider_job("p", peer=OTHER)], [cached]) == {key: Reason.CACHE_IDLE}


def test_a_cached_bundle_goes_a_bundle_period_after_its_last_use_and_last_job():
    key = cache_key("bafyspec", REQ)
    used_recently = file(Area.CACHED_BUNDLE, key, mtime=NOW - 0.5 * H)
    assert plan([], [used_recently]) == {}
    ended_recently = provider_job("p", ended_at=NOW - 0.5 * H)
    assert plan([ended_recently], [file(Area.CACHED_BUNDLE, key)]) == {}
    assert plan([ended_recently], [file(Area.CACHED_BUNDLE, key)], now=NOW + H) == {
        key: Reason.CACHE_IDLE
    }


def test_a_work_dir_goes_when_its_job_is_terminal():
    running = provider_job("run1")
    ended = provider_job("run2", ended_at=NOW - 1.0)
    dirs = [file(Area.WORK, "run1"), file(Area.WORK, "run2"), file(Area.WORK, "gone")]
    assert plan([running, ended], dirs) == {
        "run2": Reason.RUN_ENDED,
        "gone": Reason.ORPHAN_EXPIRED,
    }


# --- what a crash leaves -------------------------------------------------------------------


def test_temp_files_and_half_fetches_go_only_if_an_earlier_process_left_them():
    files = [
        file(Area.TMP, ".tmp-old", mtime=START - 1),
        file(Area.TMP, ".tmp-in-flight", mtime=START + 1),
        file(Area.RECEIVED, "job1.bundle.car", mtime=START - 1),
        file(Area.RECEIVED, "job2.bundle.car", mtime=NOW),
    ]
    assert plan([], files) == {
        ".tmp-old": Reason.LEFT_BY_CRASH,
        "job1.bundle.car": Reason.LEFT_BY_CRASH,
    }


# --- job rows -------------------------------------------------------------------------------


def row(role: str, state: JobState, spec: dict, output_cid=None) -> JobRow:
    return JobRow(
        job_id="j",
        role=role,
        state=state,
        spec=spec,
        agreement=None,
        provider_peer=None,
        provider_account=None,
        price=None,
        usage=None,
        output_cid=output_cid,
        error=None,
        explanation=None,
        created_at=10.0,
        updated_at=20.0,
    )


def test_a_job_row_has_ended_only_in_a_terminal_state():
    spec = {"spec_cid": "bafyspec", "requester_peer": REQ}
    assert JobRef.from_row(row("provider", JobState.RUNNING, spec)).ended_at is None
    done = JobRef.from_row(row("provider", JobState.COMPLETED, spec, "bafyout"))
    assert done == JobRef("j", "provider", 20.0, "bafyspec", "bafyout", REQ)
    failed = JobRef.from_row(row("requester", JobState.FAILED, {"spec_cid": "bafyspec"}))
    assert (failed.ended_at, failed.spec_cid, failed.requester_peer) == (20.0, "bafyspec", None)
