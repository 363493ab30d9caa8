"""A provider restarted mid-job: the job still completes once, and the
restarted provider resumes its record of the job to an end (never stuck)."""

from __future__ import annotations

from maskd.devnet import wait_until
from tests.integration.test_jobs import TERMINAL, busy, job, job_toml, submit, wait_done


def test_a_provider_restarted_mid_job_resumes_its_side_and_the_job_is_owed_once(cluster, tmp_path):
    requester, *providers = cluster.devnet(3)
    spec = job_toml(tmp_path, "slow", busy(3_000_000_000), max_seconds=60)
    j = submit(requester, spec)
    wait_until(lambda: job(requester, j)["state"] == "running", 30, "the job to start")
    provider = next(p for p in providers if p.peer_id == job(requester, j)["provider"])
    port = provider.addrs[0].split("/tcp/")[1].split("/")[0]
    provider.kill()
    provider.extra_args = ["--listen", f"/ip4/127.0.0.1/tcp/{port}"]
    provider.start().wait_ready()
    final = wait_done(requester, [j], 120)[j]
    assert final["state"] == "completed", final
    owed = [e for e in requester.call("v1.jobs.owed")["entries"] if e["job_id"] == j]
    assert len(owed) == 1 and owed[0]["provider_peer"] == final["provider"]

    def provider_side_ended() -> bool:
        rows = [r for r in provider.call("v1.jobs.list") if r["job_id"] == j]
        return bool(rows) and rows[0]["state"] in TERMINAL

    wait_until(provider_side_ended, 60, "the restarted provider to settle its record of the job")
