"""Jobs end to end over real maskd processes: a requester (node0) and providers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from maskd.devnet import wait_until

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"
TERMINAL = {"completed", "failed", "cancelled"}


def wat(body: str, data: str = "") -> str:
    return f"""(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  {data}
  (func (export "_start") (local $i i64) {body}))
"""


SPIN = wat("(loop $l (br $l))")
GROW = wat(
    "(loop $l (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))"
    " (then (call $exit (i32.const 12)))) (br $l))"
)
OPEN_ETC_PASSWD = wat(
    "(call $exit (call $path_open (i32.const 3) (i32.const 0) (i32.const 1024) (i32.const 11)"
    " (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 12)))",
    data='(data (i32.const 1024) "/etc/passwd")',
)

# writes "boom: bad input\n" to stderr (one iovec at 1024 -> 16 bytes at 2048), exits 3
STDERR_EXIT3 = wat(
    "(drop (call $fd_write (i32.const 2) (i32.const 1024) (i32.const 1) (i32.const 1100)))"
    " (call $exit (i32.const 3))",
    data='(data (i32.const 1024) "\\00\\08\\00\\00\\10\\00\\00\\00")'
    ' (data (i32.const 2048) "boom: bad input\\n")',
)


def busy(iterations: int) -> str:
    """Counts to ``iterations`` (about 0.7e9 per second here), then exits 0."""
    return wat(
        f"(loop $l (local.set $i (i64.add (local.get $i) (i64.const 1)))"
        f" (br_if $l (i64.lt_u (local.get $i) (i64.const {iterations}))))"
    )


def job_toml(
    tmp: Path,
    name: str,
    program: str | Path,
    *,
    args=(),
    inputs=(),
    cpu=1,
    memory_mb=64,
    max_seconds=30,
    max_fuel=None,
    deadline=120,
) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(program, str):
        (d / "prog.wasm").write_text(program)
        program = d / "prog.wasm"
    fuel = f"max_fuel = {max_fuel}\n" if max_fuel else ""
    (d / "job.toml").write_text(
        f'name = "{name}"\nexecutor = "wasm"\nprogram = "{program}"\n'
        f"args = {list(args)!r}\ninputs = {[str(i) for i in inputs]!r}\n".replace("'", '"')
        + f"[resources]\ncpu = {cpu}\nmemory_mb = {memory_mb}\nmax_seconds = {max_seconds}\n{fuel}"
        + f'[price]\nmax_total = "1000000000000000000"\ndeadline_seconds = {deadline}\n'
        + '[verify]\nmode = "receipt"\n'
    )
    return d / "job.toml"


def submit(node, path: Path) -> str:
    return node.call("v1.jobs.submit", {"path": str(path)}, timeout=60)["job_id"]


def job(node, job_id: str) -> dict:
    return node.call("v1.jobs.get", {"job_id": job_id})


def wait_done(node, job_ids, timeout: float) -> dict[str, dict]:
    done: dict[str, dict] = {}

    def all_done() -> bool:
        for j in job_ids:
            if j not in done:
                row = job(node, j)
                if row["state"] in TERMINAL:
                    done[j] = row
        return len(done) == len(job_ids)

    wait_until(all_done, timeout, f"{len(job_ids)} jobs to finish", interval=0.2)
    return done


@pytest.fixture
def market(cluster):
    return cluster.devnet(4)


def test_a_requester_and_three_providers_complete_20_jobs(market, tmp_path):
    requester, *providers = market
    spec = job_toml(tmp_path, "hello", HELLO / "hello.wasm", args=["10"], inputs=[HELLO / "data"])
    ids: list[str] = []
    lock = threading.Lock()

    def go():
        j = submit(requester, spec)
        with lock:
            ids.append(j)

    threads = [threading.Thread(target=go) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 20
    done = wait_done(requester, ids, 180)
    assert {r["state"] for r in done.values()} == {"completed"}, [r["error"] for r in done.values()]
    used = {r["provider"] for r in done.values()}
    assert used <= {p.peer_id for p in providers}
    owed = requester.call("v1.jobs.owed")["entries"]
    assert sorted(e["job_id"] for e in owed) == sorted(ids)  # each job owed exactly once
    # the provider's side agrees
    ran = [r for p in providers for r in p.call("v1.jobs.list") if r["job_id"] in ids]
    assert sorted(r["job_id"] for r in ran if r["state"] == "completed") == sorted(ids)
    logs = requester.call("v1.jobs.logs", {"job_id": ids[0]})
    assert "sum of the first 10 squares: 385" in logs["stdout"]
    out = tmp_path / "result"
    requester.call("v1.jobs.result", {"job_id": ids[0], "dest": str(out)})
    assert "sum_of_squares(10) = 385" in (out / "out" / "result.txt").read_text()
    # 20 jobs with one spec: each provider fetched the bundle once and reused it
    caches = [p.call("v1.jobs.stats")["bundle_cache"] for p in providers]
    for p, cache in zip(providers, caches, strict=True):
        ran = sum(1 for r in done.values() if r["provider"] == p.peer_id)
        assert cache["misses"] <= 1 and cache["hits"] + cache["misses"] >= ran, cache
        assert cache["in_use"] == 0
    served = requester.call("v1.jobs.stats")["payloads_served"].get("served_bundle", 0)
    assert served == sum(c["misses"] for c in caches) <= 3


def test_an_unplaceable_job_is_explained_and_fails_at_its_deadline(market, tmp_path):
    requester = market[0]
    spec = job_toml(
        tmp_path, "huge", HELLO / "hello.wasm", memory_mb=900_000, max_seconds=5, deadline=8
    )
    j = submit(requester, spec)

    def refused() -> bool:
        ex = requester.call("v1.jobs.explain", {"job_id": j})
        return any(a.get("reason") == "insufficient_memory" for a in ex.get("answers", []))

    wait_until(refused, 10, "providers to refuse with a reason")
    text = requester.call("v1.jobs.explain", {"job_id": j})["text"]
    assert "insufficient_memory" in text
    final = wait_done(requester, [j], 30)[j]
    assert final["state"] == "failed" and final["error"]["code"] == "deadline_passed"
    assert final["explanation"] and "insufficient_memory" in str(final["explanation"])


def test_limits_and_the_sandbox_end_jobs_with_clear_errors(market, tmp_path):
    requester = market[0]
    cases = {
        "fuel": (
            job_toml(tmp_path, "fuel", HELLO / "hello.wasm", args=["10"], max_fuel=1000),
            "out_of_fuel",
        ),
        "time": (job_toml(tmp_path, "time", SPIN, max_seconds=1), "timeout"),
        "memory": (job_toml(tmp_path, "memory", GROW, memory_mb=1), "memory_limit"),
        "escape": (
            job_toml(tmp_path, "escape", OPEN_ETC_PASSWD, inputs=[HELLO / "data"]),
            "nonzero_exit",
        ),
        "stderr": (job_toml(tmp_path, "stderr", STDERR_EXIT3), "nonzero_exit"),
    }
    ids = {name: submit(requester, spec) for name, (spec, _) in cases.items()}
    done = wait_done(requester, list(ids.values()), 120)
    for name, (_, code) in cases.items():
        row = done[ids[name]]
        assert row["state"] == "failed", (name, row)
        assert row["error"]["code"] == code, (name, row["error"])
        assert row["error"]["message"]
    # the escape attempt got an errno, not the file
    assert done[ids["escape"]]["error"]["exit_code"] not in (0, None)
    # a failed run's logs reach the requester: why it failed is one command away
    assert done[ids["stderr"]]["error"]["exit_code"] == 3
    wait_until(
        lambda: requester.call("v1.jobs.logs", {"job_id": ids["stderr"]})["available"],
        30,
        "the failed job's logs to arrive",
    )
    logs = requester.call("v1.jobs.logs", {"job_id": ids["stderr"]})
    assert logs["stderr"] == "boom: bad input\n"


def test_a_provider_killed_mid_job_is_replaced_and_the_job_is_owed_once(market, tmp_path):
    requester, *providers = market
    spec = job_toml(tmp_path, "slow", busy(3_000_000_000), max_seconds=60)
    j = submit(requester, spec)
    wait_until(lambda: job(requester, j)["state"] == "running", 30, "the job to start")
    first = job(requester, j)["provider"]
    victim = next(p for p in providers if p.peer_id == first)
    victim.kill()
    final = wait_done(requester, [j], 120)[j]
    assert final["state"] == "completed", final
    assert final["provider"] != first
    owed = [e for e in requester.call("v1.jobs.owed")["entries"] if e["job_id"] == j]
    assert len(owed) == 1 and owed[0]["provider_peer"] == final["provider"]


def test_a_requester_restarted_mid_job_resumes_and_completes(market, tmp_path):
    requester = market[0]
    spec = job_toml(tmp_path, "slow", busy(2_000_000_000), max_seconds=60)
    j = submit(requester, spec)
    wait_until(lambda: job(requester, j)["state"] == "running", 30, "the job to start")
    port = requester.addrs[0].split("/tcp/")[1].split("/")[0]
    requester.kill()
    requester.extra_args = ["--listen", f"/ip4/127.0.0.1/tcp/{port}"]
    requester.start().wait_ready()
    final = wait_done(requester, [j], 120)[j]
    assert final["state"] == "completed", final
    owed = [e for e in requester.call("v1.jobs.owed")["entries"] if e["job_id"] == j]
    assert len(owed) == 1


async def _ask_for_payload(node, job_id: str, kind: str):
    """Open /mask/job/1 to ``node`` from a fresh in-process libp2p host (a third
    party with a valid identity record of its own) and ask for a payload."""
    import os

    import multiaddr
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2p.mesh import make_host
    from protocol import jobdata as jd
    from protocol.identity import make_identity_record
    from storage.crypto import x25519_from_seed

    key_pair = create_new_key_pair(os.urandom(32))
    host = make_host(key_pair)
    info = info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0]))
    record = make_identity_record(
        os.urandom(32), host.get_id().to_base58(), x25519_from_seed(os.urandom(32))[1], 1
    )
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(30):
            await host.connect(info)
            stream = await host.new_stream(info.peer_id, [jd.JOB_PROTOCOL])
            req = jd.PayloadRequest(job_id=job_id, kind=kind, identity=record)
            await stream.write(jd.encode_frame(req))
            answer = await jd.FrameReader(stream).next()
            await stream.close()
    return answer


async def test_a_third_node_that_knows_the_spec_cid_cannot_fetch_the_payload(market, tmp_path):
    import trio

    from protocol.errors import MaskError

    requester, *providers = market
    spec = job_toml(
        tmp_path, "private", busy(1_500_000_000), inputs=[HELLO / "data"], max_seconds=60
    )
    submitted = await trio.to_thread.run_sync(
        lambda: requester.call("v1.jobs.submit", {"path": str(spec)}, timeout=60)
    )
    j, spec_cid = submitted["job_id"], submitted["spec_cid"]

    def running() -> bool:
        return job(requester, j)["state"] == "running"

    await trio.to_thread.run_sync(lambda: wait_until(running, 30, "the job to start"))
    provider = job(requester, j)["provider"]
    outsider = next(p for p in providers if p.peer_id != provider)
    # not in the requester's block store: the bundle is a private CAR
    with pytest.raises(MaskError) as fetched:
        await trio.to_thread.run_sync(
            lambda: outsider.call(
                "v1.storage.get",
                {"cid": spec_cid, "dest": str(tmp_path / "stolen"), "peers": [requester.peer_id]},
                timeout=60,
            )
        )
    assert fetched.value.code == "block_unavailable", fetched.value
    assert not (tmp_path / "stolen").exists()
    # and /mask/job/1 refuses a peer that is not the matched provider
    answer = await _ask_for_payload(requester, j, "bundle")
    assert type(answer).__name__ == "PayloadRefused" and answer.reason == "not_party", answer
    # the job still completes, and its result is as private
    final = (await trio.to_thread.run_sync(lambda: wait_done(requester, [j], 120)))[j]
    assert final["state"] == "completed", final
    holder = next(p for p in providers if p.peer_id == final["provider"])
    answer = await _ask_for_payload(holder, j, "result")
    assert type(answer).__name__ == "PayloadRefused" and answer.reason == "not_party", answer
    out = tmp_path / "result"
    requester.call("v1.jobs.result", {"job_id": j, "dest": str(out)})
    assert (out / "stdout.log").exists()
