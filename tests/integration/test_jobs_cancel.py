"""`mask cancel` stops a job everywhere."""

from __future__ import annotations

import subprocess
import sys

from maskd.devnet import wait_until
from tests.integration.test_jobs import busy, job, job_toml, submit, wait_done


def mask_cancel(node, job_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from maskd.cli import main; main()", "--socket", str(node.socket)]
        + ["cancel", job_id],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_mask_cancel_stops_a_running_job_on_the_provider_too(cluster, tmp_path):
    requester, *providers = cluster.devnet(3)
    spec = job_toml(tmp_path, "forever", busy(10**15), max_seconds=120, deadline=300)
    j = submit(requester, spec)
    wait_until(lambda: job(requester, j)["state"] == "running", 30, "the job to start")
    provider_id = job(requester, j)["provider"]
    provider = next(p for p in providers if p.peer_id == provider_id)
    r = mask_cancel(requester, j)
    assert r.returncode == 0, r.stderr
    assert wait_done(requester, [j], 10)[j]["state"] == "cancelled"

    def stopped_on_provider() -> bool:
        rows = [x for x in provider.call("v1.jobs.list") if x["job_id"] == j]
        return bool(rows) and rows[0]["state"] == "cancelled"

    wait_until(stopped_on_provider, 20, "the provider to stop the job")
    assert not any(e["job_id"] == j for e in requester.call("v1.jobs.owed")["entries"])
    # cancelling again is a clear error, not a crash
    again = mask_cancel(requester, j)
    assert again.returncode in (0, 1) and "Traceback" not in again.stderr
