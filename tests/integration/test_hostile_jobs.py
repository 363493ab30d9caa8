"""The hostile harness: real daemons, one of them with one function swapped.

Each test starts a victim and a stranger that misbehaves in one way
(tests/hostile/behaviours.py), checks that the attack fails with a reason
the victim's user can read and that nothing leaked or was written where it
must not be, and then checks that the victim still serves honest work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maskd.devnet import DevNode, offers_seen, wait_until
from tests.integration.test_jobs import HELLO, job_toml, submit, wait_done

REQUESTER = ["--role", "requester"]
PROVIDER = ["--role", "provider"]


def hello(tmp: Path, name: str = "hello") -> Path:
    return job_toml(tmp, name, HELLO / "hello.wasm", args=["10"], inputs=[HELLO / "data"])


def linked(a: DevNode, b: DevNode, timeout: float = 30) -> None:
    """``a`` sees ``b``'s offer (``b`` sells)."""
    wait_until(lambda: b.peer_id in offers_seen(a), timeout, f"{a.peer_id} to see {b.peer_id}")


def run_one(requester: DevNode, spec: Path, timeout: float = 90) -> dict:
    job_id = submit(requester, spec)
    return wait_done(requester, [job_id], timeout)[job_id]


def secrets_of(node: DevNode) -> list[bytes]:
    return [p.read_bytes() for p in (node.data_dir / "peer.key",) if p.exists()]


def tree_bytes(root: Path) -> bytes:
    out = b""
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                out += p.read_bytes()
    return out


def requester_still_served(cluster, requester: DevNode, attacker: DevNode, tmp: Path) -> None:
    """The attacker leaves; an honest provider joins; the victim's next job completes."""
    attacker.stop()
    provider = cluster.node("honest", bootstrap=[requester.addrs[0]], extra_args=PROVIDER)
    linked(requester, provider)
    wait_until(
        lambda: attacker.peer_id not in offers_seen(requester), 60, "the attacker's offer to go"
    )
    row = run_one(requester, hello(tmp, "after"))
    assert row["state"] == "completed", row["error"]
    assert row["provider"] == provider.peer_id


def honest_job_still_runs(cluster, provider: DevNode, tmp: Path) -> None:
    honest = cluster.node("honest", bootstrap=[provider.addrs[0]], extra_args=REQUESTER)
    linked(honest, provider)
    row = run_one(honest, hello(tmp, "after"))
    assert row["state"] == "completed", row["error"]
    assert row["provider"] == provider.peer_id


# ------------------------------------------------------- hostile requesters


@pytest.mark.parametrize(
    "behaviour",
    ["requester_in_links_to_root", "requester_job_json_is_a_list", "requester_program_is_dev_zero"],
)
def test_a_hostile_bundle_fails_its_job_and_the_provider_keeps_serving(
    cluster, tmp_path, behaviour
):
    provider = cluster.node("provider", extra_args=PROVIDER)
    attacker = cluster.node(
        "attacker", bootstrap=[provider.addrs[0]], extra_args=REQUESTER, behaviour=behaviour
    )
    linked(attacker, provider)
    row = run_one(attacker, hello(tmp_path))
    assert row["state"] == "failed", row
    assert row["error"]["code"] in {"bad_bundle", "payload_unavailable", "unsafe_entry"}, row
    assert provider.alive(), provider.stderr_tail()
    # nothing of the provider's reached the attacker: no result, no keys in it
    result = tmp_path / "stolen"
    try:
        attacker.call("v1.jobs.result", {"job_id": row["job_id"], "dest": str(result)})
    except Exception:
        pass
    if result.exists():
        loot = tree_bytes(result)
        assert not any(secret in loot for secret in secrets_of(provider))
    # the provider stays up, says why, and its next job (from an honest peer) runs
    failures = provider.call("v1.node.info")["task_failures"]
    assert not failures, failures  # a typed job failure, not a crashed task
    provider.stop()
    provider.start().wait_ready()  # and the job does not crash it on resume either
    honest_job_still_runs(cluster, provider, tmp_path)


# -------------------------------------------------------- hostile providers


def test_a_result_with_links_shows_no_file_of_the_requester(cluster, tmp_path):
    requester = cluster.node("requester", extra_args=REQUESTER)
    secret = requester.data_dir / "peer.key"
    attacker = cluster.node(
        "attacker",
        bootstrap=[requester.addrs[0]],
        extra_args=PROVIDER,
        behaviour="provider_links_logs_to_a_requester_file",
        env={"HOSTILE_TARGET": str(secret)},
    )
    linked(requester, attacker)
    row = run_one(requester, hello(tmp_path))
    logs = requester.call("v1.jobs.logs", {"job_id": row["job_id"]})
    stolen = secret.read_bytes()
    assert stolen.hex() not in str(logs) and stolen.decode("latin-1") not in logs["stdout"]
    dest = tmp_path / "result"
    try:
        requester.call("v1.jobs.result", {"job_id": row["job_id"], "dest": str(dest)})
    except Exception as exc:
        assert "link" in str(exc) or "unsafe" in str(exc), exc
    if dest.exists():
        assert not any(Path(d, f).is_symlink() for d, _, fs in os.walk(dest) for f in fs)
    assert requester.alive(), requester.stderr_tail()
    requester_still_served(cluster, requester, attacker, tmp_path)


@pytest.mark.parametrize(
    "behaviour", ["provider_result_declares_381_tib", "provider_result_declares_a_billion_files"]
)
def test_a_result_bomb_is_refused_before_it_fills_the_disk(cluster, tmp_path, behaviour):
    requester = cluster.node("requester", extra_args=REQUESTER)
    attacker = cluster.node(
        "attacker", bootstrap=[requester.addrs[0]], extra_args=PROVIDER, behaviour=behaviour
    )
    linked(requester, attacker)
    row = run_one(requester, hello(tmp_path))
    dest = tmp_path / "result"
    with pytest.raises(Exception) as refused:
        requester.call("v1.jobs.result", {"job_id": row["job_id"], "dest": str(dest)}, timeout=60)
    assert "needs more than" in str(refused.value), refused.value  # the limit, named
    # whatever was written before the refusal is small
    written = sum(
        os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(dest) for f in fs
    )
    assert written < 256 << 20
    # logs come out of the result without unpacking it
    logs = requester.call("v1.jobs.logs", {"job_id": row["job_id"]}, timeout=30)
    assert logs["job_id"] == row["job_id"]
    assert requester.alive(), requester.stderr_tail()
    requester_still_served(cluster, requester, attacker, tmp_path)


def test_a_result_larger_than_any_sandbox_makes_is_not_downloaded(cluster, tmp_path):
    requester = cluster.node("requester", extra_args=REQUESTER)
    attacker = cluster.node(
        "attacker",
        bootstrap=[requester.addrs[0]],
        extra_args=PROVIDER,
        behaviour="provider_result_is_100_mb",
    )
    linked(requester, attacker)
    row = run_one(requester, hello(tmp_path), timeout=180)
    # refused on the announced size; on a loaded machine the requester may retry
    # the only provider it has until the job's deadline: failed either way
    assert row["state"] == "failed", row
    error = row["error"]
    assert "payload_too_large" in error["message"] or error["code"] == "deadline_passed", error
    assert not requester.call("v1.jobs.owed")["entries"]  # nothing is owed for it
    private = requester.data_dir / "jobs" / "private"
    kept = sum(p.stat().st_size for p in private.rglob("*") if p.is_file())
    assert kept < 10 << 20, kept  # nothing of it stayed, not even a temp file
    requester_still_served(cluster, requester, attacker, tmp_path)


# ---------------------------------------------------------- node tasks


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("maskd.node:Node._offer_loop", "offer_loop"),
        ("maskd.node:Node._expiry_loop", "expiry_loop"),
        ("maskd.node:Node._save_known_peers", "known_peers_loop"),
        ("p2p.mesh:Mesh._liveness_loop", "liveness_loop"),
        ("p2p.mesh:Mesh._redial_loop", "redial_loop"),
        ("p2p.mesh:Mesh._enforcer_loop", "enforcer_loop"),
        ("p2p.mesh:Mesh._drain_subscription", "drain /mask/offers/1"),
        ("storage.replicate:Replicator.expiry_loop", "pin_expiry_loop"),
    ],
)
def test_a_failing_node_task_is_restarted_and_the_node_keeps_working(
    cluster, tmp_path, target, kind
):
    """Each kind of long-running task, made to raise once: the failure is counted
    under its name, the task restarts, and the node still gossips and runs jobs."""
    node = cluster.node("flaky", behaviour=f"fail_once:{target}", extra_args=PROVIDER)
    wait_until(
        lambda: sum(node.call("v1.node.info")["task_failures"].values()) >= 1,
        30,
        f"the {kind} failure to be counted",
    )
    failures = node.call("v1.node.info")["task_failures"]
    assert failures.get(kind) == 1 or kind.startswith("drain"), failures
    other = cluster.node("other", bootstrap=[node.addrs[0]], extra_args=REQUESTER)
    linked(other, node)  # offers still flow both ways through the restarted task
    row = run_one(other, hello(tmp_path))
    assert row["state"] == "completed", row["error"]
    assert node.alive()


# ------------------------------------------------------------ hostile jobs


def _program(tmp: Path, name: str, wasm: bytes) -> Path:
    path = tmp / f"{name}.wat"
    path.write_bytes(wasm)
    return path


def _hostile_programs(tmp: Path) -> dict[str, tuple[Path, set[str]]]:
    """name -> (program, the error codes it must end with). In the daemon /in is
    fd 3 and /out fd 4 (the unit tests' programs assume no /in: fd 3)."""
    from tests.unit import test_worker_outputs as outputs
    from tests.unit.test_worker_wasm_waits import sleep_for

    saved, outputs.OUT_FD = outputs.OUT_FD, 4
    try:
        sparse = outputs.job(
            "(local.set $fd (call $open (i32.const 4) (i32.const 3)"
            f" (i32.const {outputs.O_CREAT}) (i64.const {(1 << 22) | outputs.RIGHT_WRITE})))"
            "(drop (call $set_size (local.get $fd) (i64.const 2147483648)))",
            data='(data (i32.const 1024) "big")',
        )
        return {
            "nest600": (_program(tmp, "nest", outputs.nested(600)), {"output_too_deep"}),
            "files20k": (
                _program(tmp, "files", outputs.files(20_000)),
                {"output_too_many_entries"},
            ),
            "sparse2g": (_program(tmp, "sparse", sparse), {"output_too_large"}),
            "sleep1h": (_program(tmp, "sleep", sleep_for(3600 * 10**9)), {"timeout"}),
        }
    finally:
        outputs.OUT_FD = saved


def test_hostile_jobs_fail_alone_and_the_provider_keeps_serving(cluster, tmp_path):
    provider = cluster.node("provider", extra_args=PROVIDER)
    requester = cluster.node("requester", bootstrap=[provider.addrs[0]], extra_args=REQUESTER)
    linked(requester, provider)
    programs = _hostile_programs(tmp_path)
    ids: dict[str, str] = {}
    for name, (program, _) in programs.items():
        # time enough to write 10,000 files (slow through WASI), little to sleep
        spec = job_toml(tmp_path, name, program, max_seconds=60 if name == "files20k" else 3)
        ids[name] = submit(requester, spec)
    # 24 jobs that sleep in poll_oneoff: each used to keep a thread (and a slot of
    # trio's default limiter) for good; 20 froze the provider
    sleeper = job_toml(tmp_path, "sleepers", programs["sleep1h"][0], max_seconds=2)
    sleepers = [submit(requester, sleeper) for _ in range(24)]
    done = wait_done(requester, [*ids.values(), *sleepers], 180)
    for name, job_id in ids.items():
        row = done[job_id]
        assert row["state"] == "failed", (name, row)
        assert row["error"]["code"] in programs[name][1], (name, row["error"])
    assert {done[j]["error"]["code"] for j in sleepers} == {"timeout"}
    # nothing a hostile job left was imported: the provider's results are small
    results = provider.data_dir / "jobs" / "private" / "results"
    stored = sum(p.stat().st_size for p in results.glob("*.car"))
    assert stored < 10 << 20, stored
    assert not provider.call("v1.node.info")["task_failures"]
    row = run_one(requester, hello(tmp_path, "after"))
    assert row["state"] == "completed", row["error"]
    # everything both nodes wrote (keys, jobs.db, result CARs, unpacked bundles,
    # work dirs) is owner-only
    for node in (provider, requester):
        loose = [
            (str(p), oct(p.lstat().st_mode & 0o777))
            for p in node.data_dir.rglob("*")
            if not p.is_symlink() and p.lstat().st_mode & 0o077
        ]
        assert not loose, loose
