"""``mask zk circuits|prove|verify``: local proving and checking, no daemon."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from maskd.cli import main
from zkp.binding import job_binding
from zkp.circuit import circuit_cid, load_circuit, shipped_circuits
from zkp.formats import vk_id

JOB = "ab" * 32
REQ = "0x" + "11" * 20
PROV = "0x" + "22" * 20


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def proved(tmp_path_factory):
    """One real proof of the preimage circuit, bound to JOB between REQ and PROV."""
    base = tmp_path_factory.mktemp("zk")
    (base / "input.json").write_text(json.dumps({"preimage": ["3", "4"]}))
    res = invoke(
        "zk", "prove", "poseidon_preimage", str(base / "input.json"), "-o", str(base / "p"),
        "--job-id", JOB, "--requester", REQ, "--provider", PROV, "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return base / "p", json.loads(res.output)


def test_circuits_lists_the_shipped_ones_with_cid_and_vk_id():
    res = invoke("zk", "circuits", "--json")
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(rows) == set(shipped_circuits())
    for name, path in shipped_circuits().items():
        c = load_circuit(path)
        assert rows[name]["cid"] == circuit_cid(path)
        assert rows[name]["vk_id"] == vk_id(c.vk)
        assert rows[name]["public"][-1] == "binding"
    text = invoke("zk", "circuits").output
    assert "private_stats" in text and "vk id:" in text


def test_prove_writes_snarkjs_files_and_binds_the_job(proved):
    out, body = proved
    assert body["public"]["binding"] == str(job_binding(JOB, REQ, PROV))
    for name in ("proof.json", "public.json", "verification_key.json", "outputs.json"):
        assert (out / name).is_file()
    public = json.loads((out / "public.json").read_text())
    assert public[-1] == body["public"]["binding"]


def test_verify_valid_against_the_trusted_circuit(proved):
    out, _ = proved
    res = invoke("zk", "verify", str(out), "--circuit", "poseidon_preimage")
    assert res.exit_code == 0
    assert res.output.startswith("valid") and "binding =" in res.output


def test_verify_rejects_a_changed_output_with_exit_1(proved, tmp_path):
    out, _ = proved
    public = json.loads((out / "public.json").read_text())
    public[0] = str(int(public[0]) + 1)
    (tmp_path / "public.json").write_text(json.dumps(public))
    res = invoke(
        "zk", "verify", "--circuit", "poseidon_preimage",
        "--proof", str(out / "proof.json"), "--public", str(tmp_path / "public.json"), "--json",
    )  # fmt: skip
    assert res.exit_code == 1
    assert json.loads(res.output)["valid"] is False


def test_verify_against_another_circuit_is_invalid(proved):
    res = invoke("zk", "verify", str(proved[0]), "--circuit", "private_stats")
    assert res.exit_code == 1 and res.output.startswith("invalid: ")


def test_unreadable_and_usage_errors_exit_2(tmp_path):
    assert invoke("zk", "verify").exit_code == 2
    assert invoke("zk", "verify", str(tmp_path / "missing")).exit_code == 2
    (tmp_path / "proof.json").write_text("{not json")
    (tmp_path / "public.json").write_text("[]")
    res = invoke("zk", "verify", str(tmp_path), "--circuit", "poseidon_preimage")
    assert res.exit_code == 2
    assert invoke("zk", "prove", "no_such_circuit", "x.json", "-o", str(tmp_path)).exit_code == 2


def test_prove_refuses_an_input_that_sets_the_binding(tmp_path):
    (tmp_path / "in.json").write_text(json.dumps({"preimage": ["1", "2"], "binding": "7"}))
    res = invoke("zk", "prove", "poseidon_preimage", str(tmp_path / "in.json"), "-o", str(tmp_path))
    assert res.exit_code == 2
    assert "binding" in res.output


def test_prove_needs_the_three_binding_parts_together(tmp_path):
    (tmp_path / "in.json").write_text(json.dumps({"preimage": ["1", "2"]}))
    res = invoke(
        "zk", "prove", "poseidon_preimage", str(tmp_path / "in.json"), "-o", str(tmp_path),
        "--job-id", JOB,
    )  # fmt: skip
    assert res.exit_code == 2 and "go together" in res.output
