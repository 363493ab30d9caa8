"""Misbehaviours, each one function of the real daemon swapped for a hostile one.

A behaviour is applied by ``tests.hostile.launch`` before the daemon starts.
Hostile requesters change the job bundle they serve (what a stranger's
bundle can hold); hostile providers change the result they store and serve
(what a stranger's result can hold). The rest of the node is unmodified.
``HOSTILE_TARGET`` (environment) names a file on the victim's machine that
an attack tries to read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.dagbuild import Dag

BEHAVIOURS: dict[str, Callable[[], None]] = {}


def behaviour(fn: Callable[[], None]) -> Callable[[], None]:
    BEHAVIOURS[fn.__name__] = fn
    return fn


# ------------------------------------------------------------ requesters


def _bundle_mutation(mutate: Callable[[Path], None]) -> None:
    """Swap JobsRpc._bundle: build the honest bundle dir, then ``mutate`` it."""
    from maskd.jobs_rpc import JobsRpc

    honest = JobsRpc._bundle

    async def hostile(self, spec):
        bundle, spec = await honest(self, spec)  # (bundle dir, spec as packed)
        mutate(bundle)
        return bundle, spec

    JobsRpc._bundle = hostile


@behaviour
def requester_in_links_to_root() -> None:
    """`in` is a symlink out of the bundle: the provider's data dir, keys included."""

    def mutate(tmp: Path) -> None:
        shutil.rmtree(tmp / "in")
        os.symlink("../../../../../../../../..", tmp / "in")

    _bundle_mutation(mutate)


@behaviour
def requester_job_json_is_a_list() -> None:
    _bundle_mutation(lambda tmp: (tmp / "job.json").write_text("[]"))


@behaviour
def requester_program_is_dev_zero() -> None:
    def mutate(tmp: Path) -> None:
        (tmp / "program.wasm").unlink()
        os.symlink("/dev/zero", tmp / "program.wasm")

    _bundle_mutation(mutate)


# ------------------------------------------------------------- providers


def _result_mutation(build: Callable[[object, str, Path], str | None]) -> None:
    """Swap WasmWorker.store_output: ``build(worker, job_id, result_dir)`` may edit the
    result dir before the honest import, or return the CID of a result it stored itself."""
    from maskd.wasm_worker import WasmWorker

    honest = WasmWorker.store_output

    async def hostile(self, job_id: str) -> str:
        result = self._dir(job_id) / "result"
        result.mkdir(parents=True, exist_ok=True)
        cid = build(self, job_id, result)
        if cid is not None:
            return cid
        return await honest(self, job_id)

    WasmWorker.store_output = hostile


@behaviour
def provider_links_logs_to_a_requester_file() -> None:
    """stdout.log -> a file on the requester's machine; out/evil -> /etc/passwd."""

    def build(worker, job_id: str, result: Path) -> None:
        target = os.environ["HOSTILE_TARGET"]
        (result / "stdout.log").unlink(missing_ok=True)
        os.symlink(target, result / "stdout.log")
        (result / "out").mkdir(exist_ok=True)
        os.symlink("/etc/passwd", result / "out" / "evil")

    _result_mutation(build)


@behaviour
def provider_result_is_100_mb() -> None:
    """A real 100 MB result: more than any sandbox lets a job write (64 MiB of /out)."""

    def build(worker, job_id: str, result: Path) -> None:
        (result / "out").mkdir(exist_ok=True)
        with open(result / "out" / "big", "wb") as f:
            for _ in range(100):
                f.write(os.urandom(1 << 20))

    _result_mutation(build)


def _store_dag(worker, dag: Dag, root: str) -> str:
    dag.write_car(worker.payloads.files.result(root), root)
    return root


@behaviour
def provider_result_declares_381_tib() -> None:
    """A ~1 MB result whose out/big declares hundreds of TiB (one leaf, linked over and over)."""

    def build(worker, job_id: str, result: Path) -> str:
        dag = Dag()
        leaf = dag.raw(b"\0" * 262144)
        level = dag.file([leaf] * 1000, [262144] * 1000)
        size = 262144 * 1000
        for _ in range(2):
            level = dag.file([level] * 1000, [size] * 1000)
            size *= 1000
        empty = dag.raw(b"")
        out = dag.dir([(b"big", level)])
        root = dag.dir([(b"out", out), (b"stdout.log", empty), (b"stderr.log", empty)])
        return _store_dag(worker, dag, root)

    _result_mutation(build)


@behaviour
def provider_result_declares_a_billion_files() -> None:
    def build(worker, job_id: str, result: Path) -> str:
        dag = Dag()
        empty = dag.raw(b"")
        level = dag.dir([(b"f%04d" % i, empty) for i in range(1000)])
        for _ in range(2):
            level = dag.dir([(b"d%04d" % i, level) for i in range(1000)])
        root = dag.dir([(b"out", level), (b"stdout.log", empty), (b"stderr.log", empty)])
        return _store_dag(worker, dag, root)

    _result_mutation(build)


# ------------------------------------------------------------- zk jobs


def _random_proof():
    """A well-formed Groth16 proof of nothing: random points of the right groups."""
    import secrets

    from zkp import backends
    from zkp.formats import SCALAR_FIELD, Proof

    curve = backends.load(backends.installed()[0])

    def k() -> int:
        return 1 + secrets.randbelow(SCALAR_FIELD - 1)

    return Proof(a=curve.g1_mul(k()), b=curve.g2_mul(k()), c=curve.g1_mul(k()))


@behaviour
def zk_wrong_output() -> None:
    """A provider that proves honestly, then changes the first public output and
    sends a made-up proof for it: its first zk job carries the honest proof (of
    the true output), every later one a random proof. It signs zk_result.json
    over what it sends as usual, so the result is slashable evidence."""
    import dataclasses

    from worker import zk
    from zkp.formats import SCALAR_FIELD

    honest = zk.prove_job
    jobs = {"n": 0}

    def lying(*args, **kwargs):
        proved = honest(*args, **kwargs)
        jobs["n"] += 1
        public = list(proved.public)
        public[0] = (public[0] + 1) % SCALAR_FIELD  # the first output, still a field element
        proof = proved.proof if jobs["n"] == 1 else _random_proof()
        return dataclasses.replace(proved, proof=proof, public=tuple(public))

    zk.prove_job = lying


@behaviour
def zk_refuse_pay() -> None:
    """A requester that checks the proofs it receives (and records what it owes)
    but never sends a voucher: every Payment it would send is dropped."""
    from scheduler import requester as rq
    from scheduler.market import RequesterService

    honest = RequesterService._execute

    async def stingy(self, cmds, now):
        withheld = [c for c in cmds if isinstance(c, rq.SendPayment)]
        self.core.counters["payments_withheld"] += len(withheld)
        await honest(self, [c for c in cmds if not isinstance(c, rq.SendPayment)], now)

    RequesterService._execute = stingy


# ------------------------------------------------------------ node tasks


def fail_once(target: str) -> Callable[[], None]:
    """``module:Class.method``, an async method of a long-running task of the node,
    raises once (a bug, a disk error) the first time it runs; then it is honest."""
    import importlib

    module_name, attr = target.split(":")
    cls_name, method = attr.split(".")

    def apply() -> None:
        cls = getattr(importlib.import_module(module_name), cls_name)
        honest = getattr(cls, method)
        state = {"failed": False}

        async def flaky(self, *args, **kwargs):
            if not state["failed"]:
                state["failed"] = True
                raise RuntimeError(f"injected failure in {attr}")
            return await honest(self, *args, **kwargs)

        setattr(cls, method, flaky)

    return apply


def lookup(name: str) -> Callable[[], None]:
    """A named behaviour, or ``fail_once:module:Class.method``."""
    if name.startswith("fail_once:"):
        return fail_once(name.removeprefix("fail_once:"))
    return BEHAVIOURS[name]


def describe() -> str:
    return json.dumps(sorted(BEHAVIOURS))
