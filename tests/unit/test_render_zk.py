"""``mask job`` for a zk job: the circuit, the proof's verdict, the public
signals by name and every rejected result, from the daemon's job record.
Reasons and signals come from providers: shown as text, never as escapes."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from maskd import render
from maskd.cli import main
from maskd.rpc import RpcServer, maskd_version, serve_in_thread

JOB_ID = "ab" * 32
P1 = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
P2 = "12D3KooWGjSE7eCu5f1Pa8pGxscmoEcdQ5BRMGqbyMvL2dhrPCS5"
HOSTILE = "bad\x1b]0;pwned\x07 [/x]"
CIRCUIT = {"name": "private_stats", "cid": "bafybeicircuit", "id": "3f" * 32, "outputs": 3}
PUBLIC = {
    "sum": "89085",
    "count_above": "8",
    "mean_floor": "5567",
    "threshold": "5500",
    "commitment": "963",
    "binding": "42",
}


def attempt(peer: str, *, valid: bool, reason: str = "", public=None) -> dict:
    return {
        "provider_peer": peer,
        "provider_account": "0x" + "11" * 20,
        "output_cid": "bafyout",
        "valid": valid,
        "reason": reason,
        "backend": "native" if valid else None,
        "ms": 3.14 if valid else None,
        "public": public,
    }


def zk_job(attempts: list[dict], **over) -> dict:
    job = {
        "job_id": JOB_ID,
        "role": "requester",
        "name": "zk-stats",
        "state": "completed",
        "circuit": CIRCUIT,
        "verification": {"mode": "zk", "circuit": CIRCUIT, "attempts": attempts},
        "transitions": [],
    }
    job.update(over)
    return job


def test_a_valid_proof_after_a_rejected_one():
    rows = render.zk_rows(
        zk_job(
            [
                attempt(P1, valid=False, reason="the proof is bound to another job"),
                attempt(P2, valid=True, public=PUBLIC),
            ]
        )
    )
    assert rows == [
        ("circuit", f"private_stats  bafybeicircuit  id {'3f' * 32}"),
        ("proof", "valid (native, 3.1 ms)"),
        ("outputs", "sum=89085  count_above=8  mean_floor=5567"),
        ("public inputs", "threshold=5500  commitment=963"),
        ("rejected", f"{render.short_id(P1)}: the proof is bound to another job"),
    ]


def test_a_job_whose_every_result_failed_names_each_provider():
    got = render.zk_rows(
        zk_job(
            [
                attempt(P1, valid=False, reason="r1"),
                attempt(P2, valid=False, reason="r2", public=PUBLIC),
            ],
            state="failed",
        )
    )
    rows = [r for r in got if r[0] in ("proof", "rejected")]
    assert rows == [
        ("proof", f"invalid: r2 (from {render.short_id(P2)})"),
        ("rejected", f"{render.short_id(P1)}: r1"),
    ]


def test_failures_in_the_error_are_listed_when_no_verdict_was_recorded():
    job = {
        "error": {
            "code": "verification_failed",
            "message": "m",
            "verification_failures": [{"provider_peer": P1, "reason": "gone"}, "junk"],
        }
    }
    assert render.zk_rows(job) == [("rejected", f"{render.short_id(P1)}: gone")]


@pytest.mark.parametrize(
    "job",
    [
        {},
        {"circuit": None, "verification": None},
        {"circuit": "x", "verification": {"attempts": "x"}},
        {"verification": {"attempts": [1, None, {"valid": True, "ms": "fast", "public": 3}]}},
        {"circuit": {"outputs": 99}, "verification": {"attempts": [{"public": {"a": 1}}]}},
    ],
)
def test_odd_records_render_without_crashing(job):
    rows = render.zk_rows(job)
    assert all(isinstance(label, str) and isinstance(value, str) for label, value in rows)


def test_a_receipt_job_has_no_zk_rows():
    assert render.zk_rows({"job_id": JOB_ID, "state": "completed", "verification": None}) == []


# --- through the CLI --------------------------------------------------------------------


def handlers(job: dict):
    async def get(params):
        return job

    return {"v1.jobs.get": get}


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.delenv("MASK_SOCKET", raising=False)
    monkeypatch.setenv("MASK_DATA_DIR", os.fspath(tmp_path / "no-daemon-here"))
    return CliRunner()


def mask_job(runner, tmp_path, job: dict, *args: str):
    server = RpcServer(tmp_path / "maskd.sock", handlers(job), version=maskd_version())
    with serve_in_thread(server) as path:
        return runner.invoke(
            main, ["--socket", os.fspath(path), "job", JOB_ID, *args], catch_exceptions=False
        )


def test_mask_job_shows_the_proof_and_the_outputs_by_name(runner, tmp_path):
    job = zk_job(
        [
            attempt(P1, valid=False, reason=HOSTILE),
            attempt(P2, valid=True, public=PUBLIC),
        ]
    )
    result = mask_job(runner, tmp_path, job)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "circuit private_stats  bafybeicircuit" in out
    assert "proof valid (native, 3.1 ms)" in out
    assert "outputs sum=89085  count_above=8  mean_floor=5567" in out
    assert "rejected" in out and "bad\\x1b]0;pwned\\x07 [/x]" in out
    assert "\x1b" not in out and "\x07" not in out
    as_json = json.loads(mask_job(runner, tmp_path, job, "--json").stdout)
    assert as_json["verification"]["attempts"][1]["public"] == PUBLIC
    assert as_json["circuit"] == CIRCUIT


def test_mask_job_shows_a_verification_failure_as_code_and_message(runner, tmp_path):
    failures = [{"provider_peer": p, "reason": r} for p, r in ((P1, "r1"), (P2, "r2"))]
    error = {
        "code": "verification_failed",
        "message": "the results of 2 provider(s) failed verification; the last: r2",
        "verification_failures": failures,
    }
    job = zk_job(
        [attempt(P1, valid=False, reason="r1"), attempt(P2, valid=False, reason="r2")],
        state="failed",
        error=error,
    )
    out = mask_job(runner, tmp_path, job).stdout
    assert "error verification_failed: the results of 2 provider(s)" in out
    assert "'verification_failures'" not in out  # the list is shown once, as rows
    assert f"{render.short_id(P1)}: r1" in out and "invalid: r2" in out
