"""Submitting a zk job (``v1.jobs.submit``) and reading its result back.

Real spec files, the real shipped circuits, a real block store for CID
circuits, real CARs; the requester service is a fake that records what it is
given and creates the job row as the core would. The bundle is opened with
the provider's own loader (``worker.zk.load_zk_bundle``): what the requester
packs is what a provider accepts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
import trio

from maskd.jobfiles import PrivateFiles
from maskd.jobs_rpc import JobsRpc, job_json
from protocol.errors import JobError
from scheduler.async_store import ThreadedStore
from scheduler.jobstate import JobEvent
from scheduler.spec import JobSpec
from scheduler.store import JobStore
from storage.blockstore import BlockStore
from storage.carfile import export_car, write_path_car
from worker.zk import load_zk_bundle
from zkp.circuit import load_circuit, shipped_circuits
from zkp.formats import vk_id
from zkp.poseidon import poseidon

pytestmark = pytest.mark.trio

ROOT = Path(__file__).resolve().parents[2]
STATS = shipped_circuits()["private_stats"]
EXAMPLE = ROOT / "examples" / "zk-stats"


class FakeRequester:
    """Records submissions; creates the job row as RequesterCore.submit does."""

    def __init__(self, store: JobStore):
        self.store = store
        self.submitted: list[tuple[JobSpec, str]] = []

    async def submit(self, spec: JobSpec, spec_cid: str) -> str:
        job_id = f"{len(self.submitted) + 1:064x}"
        self.submitted.append((spec, spec_cid))
        stored = {"spec": msgspec.to_builtins(spec), "spec_cid": spec_cid, "deadline": 1}
        self.store.create(job_id, role="requester", spec=stored, now=1.0)
        return job_id


@pytest.fixture
def rpc(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    files = PrivateFiles(tmp_path / "private")
    blocks = BlockStore(tmp_path / "blocks", fsync=False)
    requester = FakeRequester(store)
    work = tmp_path / "work"
    work.mkdir()
    api = JobsRpc(
        store=ThreadedStore(store),
        requester=requester,
        private=files,
        storage=SimpleNamespace(store=blocks),
        connected_peers=list,
        work_dir=work,
        clock=lambda: 10.0,
        stats=dict,
    )
    yield SimpleNamespace(
        api=api, store=store, files=files, blocks=blocks, requester=requester, tmp=tmp_path
    )
    store.close()


def job_dir(tmp: Path, *, circuit: str = '"private_stats"', inputs: dict | None = None) -> Path:
    d = tmp / "job"
    d.mkdir(exist_ok=True)
    doc = inputs if inputs is not None else json.loads((EXAMPLE / "input.json").read_text())
    (d / "input.json").write_text(json.dumps(doc))
    (d / "job.toml").write_text(
        f'name = "stats"\nexecutor = "zk-groth16"\ncircuit = {circuit}\n'
        'inputs = ["input.json"]\n[price]\nmax_total = "1000"\n'
    )
    return d / "job.toml"


async def submit(rpc, path: Path) -> dict:
    with trio.fail_after(60):
        return await rpc.api.submit({"path": str(path)})


def unpacked_bundle(rpc, spec_cid: str) -> Path:
    dest = rpc.tmp / f"bundle-{spec_cid[-6:]}"
    export_car(rpc.files.bundle(spec_cid), spec_cid, dest)
    return dest


async def test_a_shipped_circuit_job_is_packed_as_a_provider_reads_it(rpc):
    out = await submit(rpc, job_dir(rpc.tmp))
    spec, spec_cid = rpc.requester.submitted[0]
    assert out["spec_cid"] == spec_cid
    circuit = load_circuit(STATS)
    zk = spec.zk
    assert zk is not None
    assert (zk.name, zk.circuit_id) == ("private_stats", vk_id(circuit.vk))
    assert zk.public_names == circuit.public_names and zk.n_outputs == 3
    assert zk.vk == json.loads((STATS / "verification_key.json").read_text())
    example = json.loads((EXAMPLE / "input.json").read_text())
    assert zk.public_inputs == {
        "threshold": example["threshold"],
        "commitment": example["commitment"],
    }
    # the bundle: job.json, exactly the circuit's five files, in/input.json
    bundle = unpacked_bundle(rpc, spec_cid)
    assert sorted(p.name for p in (bundle / "circuit").iterdir()) == sorted(
        p.name for p in STATS.iterdir()
    )
    assert json.loads((bundle / "in" / "input.json").read_text()) == example
    job = json.loads((bundle / "job.json").read_text())
    assert job["executor"] == "zk-groth16" and job["circuit"] == "circuit"
    assert job["inputs"] == ["input.json"] and job["circuit_id"] == zk.circuit_id
    assert "program" not in job and "zk" not in job and str(rpc.tmp) not in json.dumps(job)
    # the provider's own loader takes it
    loaded = load_zk_bundle(bundle, memory_bytes=2048 << 20)
    assert loaded.circuit.name == "private_stats"
    assert loaded.inputs["commitment"] == example["commitment"]
    # the job row names the circuit (mask job)
    row_json = job_json(rpc.store.get(out["job_id"], role="requester"))
    assert row_json["circuit"] == {
        "name": "private_stats",
        "cid": zk.cid,
        "id": zk.circuit_id,
        "outputs": 3,
    }
    assert row_json["name"] == "stats"


async def test_the_example_s_commitment_is_the_poseidon_of_its_values():
    doc = json.loads((EXAMPLE / "input.json").read_text())
    assert len(doc["values"]) == 16
    assert int(doc["commitment"]) == poseidon([int(v) for v in doc["values"]])


async def test_a_circuit_by_cid_is_fetched_and_packed_like_a_folder(rpc):
    root = await trio.to_thread.run_sync(lambda: rpc.blocks.add_path(STATS).cid)
    out = await submit(rpc, job_dir(rpc.tmp, circuit=f'"{root}"'))
    by_path = await submit(rpc, job_dir(rpc.tmp))
    (cid_spec, _), (path_spec, _) = rpc.requester.submitted
    assert cid_spec.zk.cid == path_spec.zk.cid == root  # the circuit's CID is its folder's
    assert cid_spec.zk.circuit_id == path_spec.zk.circuit_id
    assert out["spec_cid"] == by_path["spec_cid"]  # one bundle: a provider caches it once


def _stats_input(**change) -> dict:
    doc = json.loads((EXAMPLE / "input.json").read_text())
    doc.update(change)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        (_stats_input(binding="5"), "binding"),
        (_stats_input(threshold=None), "lacks the circuit's input threshold"),
        (_stats_input(extra="1"), "no input signal 'extra'"),
        (_stats_input(threshold=["1", "2"]), "threshold is an array"),
        (_stats_input(threshold="x"), "input.json"),
        ([1, 2], "not an object"),
    ],
)
async def test_an_input_the_provider_would_refuse_is_refused_at_submission(rpc, inputs, reason):
    with pytest.raises(JobError) as info:
        await submit(rpc, job_dir(rpc.tmp, inputs=inputs))
    err = info.value
    assert err.code == "spec_invalid" and "inputs[0]:" in err.message, err.message
    assert reason in err.message, err.message
    assert err.hint
    assert rpc.requester.submitted == []
    assert [p.name for p in (rpc.tmp / "work").iterdir()] == []  # nothing left behind


async def test_a_broken_circuit_folder_is_refused_with_the_loader_s_reason(rpc):
    broken = rpc.tmp / "job" / "broken"
    broken.parent.mkdir()
    shutil.copytree(STATS, broken)
    (broken / "circuit.zkey").unlink()
    with pytest.raises(JobError) as info:
        await submit(rpc, job_dir(rpc.tmp, circuit='"broken"'))
    err = info.value
    assert err.code == "spec_invalid" and "circuit:" in err.message
    assert "circuit.zkey" in err.message and err.hint
    (broken / "circuit.zkey").symlink_to(STATS / "circuit.zkey")  # a link is not followed
    with pytest.raises(JobError, match="circuit:"):
        await submit(rpc, job_dir(rpc.tmp, circuit='"broken"'))


async def test_the_result_gets_the_requester_s_own_verification_key(rpc):
    out = await submit(rpc, job_dir(rpc.tmp))
    job_id = out["job_id"]
    # a provider's result whose verification_key.json is its own (here: junk)
    result = rpc.tmp / "result"
    (result / "out").mkdir(parents=True)
    (result / "out" / "outputs.json").write_text('{"sum": "1"}')
    (result / "proof.json").write_text("{}")
    (result / "public.json").write_text("[]")
    (result / "verification_key.json").write_text('{"not": "the circuit key"}')
    cid = write_path_car(result, rpc.files.result("x")).cid
    shutil.move(rpc.files.result("x"), rpc.files.result(cid))
    s = rpc.store
    s.transition(job_id, JobEvent.MATCHED, role="requester", now=2.0, provider_peer="P")
    s.transition(job_id, JobEvent.STARTED, role="requester", now=3.0)
    s.transition(job_id, JobEvent.RESULT_RECEIVED, role="requester", now=4.0, output_cid=cid)
    s.transition(job_id, JobEvent.VERIFIED, role="requester", now=5.0)
    dest = rpc.tmp / "got"
    with trio.fail_after(30):
        await rpc.api.result({"job_id": job_id, "dest": str(dest)})
    own = json.loads((STATS / "verification_key.json").read_text())
    assert json.loads((dest / "verification_key.json").read_text()) == own
    assert (dest / "proof.json").read_text() == "{}"  # the rest is the provider's, untouched
    assert json.loads((dest / "out" / "outputs.json").read_text()) == {"sum": "1"}
