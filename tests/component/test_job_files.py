"""Job files on disk: the retention sweep and the provider's bundle cache.

Real JobStore, real files, real wasmtime; the payload fetch is a fake that
counts (fetch_private's checks are tested in tests/unit/test_jobdata.py).
``now`` comes from a settable wall clock, because file mtimes are wall time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from maskd.jobfiles import SWEEP_INTERVAL_S, BundleCache, PrivateFiles, Sweeper, scan_files
from maskd.retention import Reason, RetentionPolicy, cache_key
from maskd.wasm_worker import WasmWorker
from protocol.errors import JobError
from scheduler.async_store import ThreadedStore
from scheduler.jobstate import JobEvent
from scheduler.store import JobStore
from storage.carfile import write_path_car

pytestmark = pytest.mark.trio

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello"
H = 3600.0
POLICY = RetentionPolicy(result_s=72 * H, bundle_s=1 * H)
REQ, OTHER = "12D3KooRequester", "12D3KooSomeoneElse"


class WallClock:
    """Wall time, moved forward by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def autojump_clock():
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def node(tmp_path):
    jobs_dir = tmp_path / "jobs"
    files = PrivateFiles(jobs_dir / "private")
    clock = WallClock()
    cache = BundleCache(files.cache_root, max_bytes=1 << 30, clock=clock)
    store = JobStore(jobs_dir / "jobs.db")
    return SimpleNamespace(
        dir=jobs_dir, files=files, cache=cache, store=store, clock=clock, src=tmp_path / "src"
    )


def sweeper(node, **kw) -> Sweeper:
    store = ThreadedStore(node.store)
    return Sweeper(node.dir, node.files, store, node.cache, POLICY, clock=node.clock, **kw)


def tree(root: Path, text: str) -> Path:
    root.mkdir(parents=True)
    (root / "payload.txt").write_text(text)
    return root


def provider_job(store, job_id, *, now, output_cid=None, done=True):
    spec = {"spec_cid": "bafyspec", "requester_peer": REQ}
    store.create(job_id, role="provider", spec=spec, now=now)
    store.transition(job_id, JobEvent.MATCHED, role="provider", now=now)
    store.transition(job_id, JobEvent.STARTED, role="provider", now=now)
    if done:
        store.transition(
            job_id, JobEvent.RESULT_RECEIVED, role="provider", now=now, output_cid=output_cid
        )
        store.transition(job_id, JobEvent.VERIFIED, role="provider", now=now)


def requester_job(store, job_id, spec_cid, *, now, ended=False, output_cid=None):
    store.create(job_id, role="requester", spec={"spec_cid": spec_cid}, now=now)
    if ended:
        store.transition(job_id, JobEvent.FAILED, role="requester", now=now, output_cid=output_cid)


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# --- the sweep ---------------------------------------------------------------------------


async def test_the_sweep_deletes_an_expired_provider_result_and_keeps_a_needed_bundle(node):
    t0 = node.clock.now
    served = await node.files.add(tree(node.src / "served", "a provider's result"), "result")
    provider_job(node.store, "p1", now=t0, output_cid=served)
    mine = await node.files.add(tree(node.src / "mine", "the user's output"), "result")
    requester_job(node.store, "r0", "bafyother", now=t0, ended=True, output_cid=mine)
    bundle = await node.files.add(tree(node.src / "bundle", "a job bundle"), "bundle")
    requester_job(node.store, "r1", bundle, now=t0)  # pending: its provider may still ask
    (node.dir / "work" / "p1" / "result").mkdir(parents=True)  # a run's scratch, job ended
    leftover = node.files.root / ".tmp-crashed"
    leftover.write_bytes(b"half a CAR")
    age(leftover, 60)  # an earlier process left it
    sweep = sweeper(node)
    in_flight = node.files.root / ".tmp-in-flight"
    in_flight.write_bytes(b"being written")

    assert {d.reason for d in await sweep.sweep()} == {Reason.RUN_ENDED, Reason.LEFT_BY_CRASH}
    assert node.files.result(served).exists()  # kept for the requester to fetch
    assert not (node.dir / "work" / "p1").exists() and not leftover.exists()
    assert in_flight.exists()

    for f in node.dir.rglob("*.car"):
        age(f, 73 * H)  # the placement grace has long passed
    node.clock.now = t0 + 73 * H
    assert [d.reason for d in await sweep.sweep()] == [Reason.RESULT_EXPIRED]
    assert not node.files.result(served).exists()
    assert node.files.bundle(bundle).exists()  # its job is not terminal
    assert node.files.result(mine).exists()  # a requester's output: never swept
    assert sweep.counters[Reason.RESULT_EXPIRED] == 1


async def test_the_sweeper_runs_at_start_and_then_every_interval(node, autojump_clock):
    t0 = node.clock.now
    served = await node.files.add(tree(node.src / "served", "a provider's result"), "result")
    provider_job(node.store, "p1", now=t0, output_cid=served)
    age(node.files.result(served), 73 * H)
    leftover = node.files.received_bundle("j0")
    leftover.write_bytes(b"half a fetch")
    age(leftover, 60)
    sweep = sweeper(node)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(sweep.run)
        assert not leftover.exists()  # before the services start
        assert node.files.result(served).exists()
        next_pass = sweep.swept
        node.clock.now = t0 + 73 * H
        await next_pass.wait()
        assert trio.current_time() - start == SWEEP_INTERVAL_S
        assert not node.files.result(served).exists()
        nursery.cancel_scope.cancel()


async def test_a_submit_racing_the_sweep_keeps_the_bundle_it_put_in_place(node):
    # an old job's bundle is due; a new job with the same spec is submitted while
    # the sweep runs. The sweep decides from what it saw; the submit must not
    # lose its bundle to that decision.
    src = tree(node.src / "bundle", "the same job again")
    spec_cid = await node.files.add(src, "bundle")
    requester_job(node.store, "old", spec_cid, now=node.clock.now - 100 * H, ended=True)
    age(node.files.bundle(spec_cid), 100 * H)
    scanned, gate = trio.Event(), trio.Event()

    async def gated_scan():  # the sweep has read the rows and listed the files: it has decided
        found = await trio.to_thread.run_sync(scan_files, node.dir, node.files)
        scanned.set()
        await gate.wait()
        return found

    sweep = sweeper(node, scan=gated_scan)
    submitted = trio.Event()

    async def submit():
        assert await node.files.add(src, "bundle") == spec_cid
        requester_job(node.store, "new", spec_cid, now=node.clock.now)
        submitted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sweep.sweep)
        await scanned.wait()
        nursery.start_soon(submit)
        while not (submitted.is_set() or node.files.lock.statistics().tasks_waiting):
            await trio.testing.wait_all_tasks_blocked(cushion=0.001)
        gate.set()
    assert submitted.is_set()
    assert node.files.bundle(spec_cid).exists()
    assert await sweep.sweep() == []  # and the new job keeps it


# --- the provider's bundle cache ----------------------------------------------------------


class CountingPayloads:
    """Stands in for PayloadClient: 'fetches' a prepared CAR and counts the fetches."""

    def __init__(self, files: PrivateFiles, cars: dict[str, Path]):
        self.files = files
        self.cars = cars
        self.fetches: list[tuple[str, str]] = []
        self.refuse: set[str] = set()
        self.gate: trio.Event | None = None
        self.limits: list[int | None] = []

    async def fetch(self, peer, job_id, kind, root, dest, *, max_bytes=None):
        assert kind == "bundle"
        self.fetches.append((peer, job_id))
        self.limits.append(max_bytes)
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if job_id in self.refuse:
            raise JobError("the peer refused the payload", code="payload_refused")
        shutil.copyfile(self.cars[root], dest)


AGREEMENT = SimpleNamespace(terms=SimpleNamespace(memory_mb=64, max_fuel=0, max_seconds=30))


def hello_bundle(tmp: Path) -> tuple[str, Path]:
    d = tmp / "hello-bundle"
    (d / "in").mkdir(parents=True)
    shutil.copytree(HELLO / "data", d / "in" / "data")
    shutil.copyfile(HELLO / "hello.wasm", d / "program.wasm")
    (d / "job.json").write_text(json.dumps({"args": ["10"]}))
    car = tmp / "hello.car"
    return write_path_car(d, car).cid, car


@pytest.fixture
def worker(node, tmp_path):
    spec_cid, car = hello_bundle(tmp_path)
    payloads = CountingPayloads(node.files, {spec_cid: car})
    w = WasmWorker(payloads, node.dir / "work", node.cache)
    return SimpleNamespace(worker=w, payloads=payloads, spec_cid=spec_cid)


async def run_job(w, job_id: str, spec_cid: str, peer: str = REQ):
    await w.fetch_payload(job_id, peer, spec_cid)
    outcome = await w.execute(job_id, AGREEMENT)
    return outcome, await w.store_output(job_id)


def digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        h.update(str(p.relative_to(d)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


async def test_a_second_job_with_the_same_spec_does_not_fetch_the_bundle_again(node, worker):
    w, spec_cid = worker.worker, worker.spec_cid
    first, out1 = await run_job(w, "job1", spec_cid)
    cached = node.cache.path(cache_key(spec_cid, REQ))
    before = digest(cached)
    second, out2 = await run_job(w, "job2", spec_cid)
    assert (first.exit_code, first.error_code) == (second.exit_code, second.error_code) == (0, "")
    assert worker.payloads.fetches == [(REQ, "job1")]  # job2 ran on the cached bundle
    assert out1 == out2  # the same program on the same input: the same result
    assert digest(cached) == before  # no run changed the shared bundle
    assert not (node.dir / "work" / "job1").exists()  # each run's scratch went with it
    assert not (node.dir / "work" / "job2").exists()
    stats = node.cache.statistics()
    assert (stats.hits, stats.misses, stats.in_use, stats.entries) == (1, 1, 0, 1)


async def test_the_same_spec_from_another_requester_is_fetched_from_that_requester(node, worker):
    # spec_cid is gossiped in the bid: knowing it must not be enough to have
    # someone else's bundle run for you
    await run_job(worker.worker, "job1", worker.spec_cid, REQ)
    await run_job(worker.worker, "job2", worker.spec_cid, OTHER)
    assert worker.payloads.fetches == [(REQ, "job1"), (OTHER, "job2")]


async def test_jobs_arriving_together_with_one_spec_fetch_it_once(node, worker):
    worker.payloads.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(run_job, worker.worker, f"job{i}", worker.spec_cid)
        await trio.testing.wait_all_tasks_blocked()
        worker.payloads.gate.set()
    assert len(worker.payloads.fetches) == 1
    assert node.cache.statistics().in_use == 0


async def test_a_failed_fetch_caches_nothing_and_the_next_job_fetches_for_itself(node, worker):
    worker.payloads.refuse.add("job1")
    failed, _ = await run_job(worker.worker, "job1", worker.spec_cid)
    assert failed.error_code == "payload_refused"
    ok, _ = await run_job(worker.worker, "job2", worker.spec_cid)
    assert (ok.exit_code, ok.error_code) == (0, "")
    assert [j for _, j in worker.payloads.fetches] == ["job1", "job2"]
    assert [p.name for p in node.files.cache_root.iterdir()] == [
        cache_key(worker.spec_cid, REQ)
    ]  # no half-made entry left behind


async def test_a_cached_bundle_that_became_unreadable_is_fetched_again(node, worker):
    await run_job(worker.worker, "job1", worker.spec_cid)
    (node.cache.path(cache_key(worker.spec_cid, REQ)) / "program.wasm").unlink()
    broken, _ = await run_job(worker.worker, "job2", worker.spec_cid)
    assert broken.error_code == "bad_bundle"
    ok, _ = await run_job(worker.worker, "job3", worker.spec_cid)
    assert (ok.exit_code, ok.error_code) == (0, "")
    assert [j for _, j in worker.payloads.fetches] == ["job1", "job3"]


async def fill_with(size: int):
    async def fill(dest: Path) -> None:
        dest.mkdir()
        (dest / "data").write_bytes(bytes(size))

    return fill


async def test_the_cache_evicts_idle_bundles_least_recently_used_first_never_a_held_one(node):
    cache = BundleCache(node.files.cache_root, max_bytes=250, clock=node.clock)
    for key in ("a", "b"):
        await cache.acquire(key, await fill_with(100))
        cache.release(key)
    cache.lease("a")  # a is used again: b is now the least recently used
    cache.release("a")
    await cache.acquire("c", await fill_with(100))  # 300 > 250: one idle entry goes
    assert sorted(e.name for e in cache.entries()) == ["a", "c"]
    assert cache.statistics().evicted == 1
    # entries runs hold stay, whatever the bound
    cache.max_bytes = 0
    await cache.acquire("d", await fill_with(100))
    assert sorted(e.name for e in cache.entries()) == ["c", "d"]  # a went; c and d are held
    assert sorted(p.name for p in node.files.cache_root.iterdir()) == ["c", "d"]
    assert cache.drop_if_idle("c") is None  # nor does the sweep take a held one


async def test_a_failed_fill_leaves_nothing_and_the_next_one_fills_for_itself(node):
    async def half_then_fail(dest: Path) -> None:
        dest.mkdir()
        (dest / "program.wasm").write_bytes(b"half")
        raise JobError("the bundle is not the DAG of its CID", code="payload_mismatch")

    with pytest.raises(JobError):
        await node.cache.acquire("k", half_then_fail)
    assert list(node.files.cache_root.iterdir()) == []
    assert await node.cache.acquire("k", await fill_with(10)) == node.cache.path("k")
    assert node.cache.statistics().misses == 2


async def test_cached_bundles_outlive_a_restart_and_half_made_ones_do_not(node):
    await node.cache.acquire("whole", await fill_with(10))
    (node.files.cache_root / ".tmp-half").mkdir()
    again = BundleCache(node.files.cache_root, max_bytes=1 << 30)
    assert [e.name for e in again.entries()] == ["whole"]
    assert again.statistics().bytes == 10


async def test_the_sweep_drops_an_idle_cached_bundle_but_not_one_a_run_holds(node):
    await node.cache.acquire("idle", await fill_with(10))
    node.cache.release("idle")
    await node.cache.acquire("held", await fill_with(10))
    node.clock.now += 2 * H
    done = await sweeper(node).sweep()
    assert [(d.file.name, d.reason) for d in done] == [("idle", Reason.CACHE_IDLE)]
    assert sorted(p.name for p in node.files.cache_root.iterdir()) == ["held"]


async def test_a_job_the_node_died_under_twice_fails_instead_of_running_again(node, worker):
    """A job that takes the provider down (a crash, an OOM kill) must not do it on
    every restart: the third start after two that never finished fails it."""
    w, spec_cid = worker.worker, worker.spec_cid
    for _ in range(2):  # two starts that never finished: the node died mid-run
        w._count_attempt("job1")
    await w.fetch_payload("job1", REQ, spec_cid)
    outcome = await w.execute("job1", AGREEMENT)
    assert outcome.error_code == "provider_crashed"
    assert "2 times" in outcome.error_message
    # a job whose earlier run ended normally is not affected
    ok, _ = await run_job(w, "job2", spec_cid)
    assert (ok.exit_code, ok.error_code) == (0, "")
    again, _ = await run_job(w, "job2", spec_cid)  # its work dir went with its output
    assert again.error_code == ""


async def test_a_bundle_is_fetched_and_unpacked_no_larger_than_the_providers_limit(node, tmp_path):
    """jobs.max_bundle_mb bounds the ciphertext asked for and what is unpacked,
    whatever the bundle's DAG declares (here: a 4 MiB file under a 1 MiB limit)."""
    d = tmp_path / "big-bundle"
    (d / "in").mkdir(parents=True)
    (d / "in" / "big.bin").write_bytes(os.urandom(4 << 20))
    shutil.copyfile(HELLO / "hello.wasm", d / "program.wasm")
    (d / "job.json").write_text(json.dumps({"args": ["10"]}))
    spec_cid = write_path_car(d, tmp_path / "big.car").cid
    payloads = CountingPayloads(node.files, {spec_cid: tmp_path / "big.car"})
    w = WasmWorker(payloads, node.dir / "work", node.cache, max_bundle_bytes=1 << 20)
    await w.fetch_payload("job1", REQ, spec_cid)
    outcome = await w.execute("job1", AGREEMENT)
    assert payloads.limits == [1 << 20]
    assert outcome.error_code == "export_limit", outcome
    assert "needs more than" in outcome.error_message
