"""A job whose program and inputs are CIDs held by other peers."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import MaskError
from tests.integration.test_jobs import HELLO, submit, wait_done


def test_program_and_input_by_cid_are_fetched_from_peers(cluster, tmp_path):
    requester, a, b = cluster.devnet(3)
    program = a.call("v1.storage.put", {"path": str(HELLO / "hello.wasm")})["cid"]
    data = b.call("v1.storage.put", {"path": str(HELLO / "data")})["cid"]
    spec = tmp_path / "job.toml"
    spec.write_text(
        f'name = "by-cid"\nexecutor = "wasm"\nprogram = "{program}"\nargs = ["3"]\n'
        f'inputs = ["{data}"]\n[resources]\ncpu = 1\nmemory_mb = 64\nmax_seconds = 30\n'
        '[price]\nmax_total = "1000000000000000000"\ndeadline_seconds = 120\n'
    )
    j = submit(requester, spec)
    final = wait_done(requester, [j], 90)[j]
    assert final["state"] == "completed", final
    logs = requester.call("v1.jobs.logs", {"job_id": j})["stdout"]
    assert "sum of the first 3 squares: 14" in logs
    out = tmp_path / "r"
    requester.call("v1.jobs.result", {"job_id": j, "dest": str(out)})
    assert (
        f"{data}/fox.txt" in (out / "out" / "result.txt").read_text()
        or "fox.txt" in (out / "out" / "result.txt").read_text()
    )


def test_an_unknown_cid_is_a_clear_submit_error(cluster, tmp_path):
    (requester,) = cluster.devnet(1)
    missing = (
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # empty file, nobody has it
    )
    spec = tmp_path / "job.toml"
    spec.write_text(
        f'name = "nope"\nexecutor = "wasm"\nprogram = "{missing}"\n[resources]\ncpu = 1\n'
        'memory_mb = 64\nmax_seconds = 5\n[price]\nmax_total = "1"\ndeadline_seconds = 60\n'
    )
    with pytest.raises(MaskError) as exc:
        submit(requester, Path(spec))
    assert exc.value.hint
