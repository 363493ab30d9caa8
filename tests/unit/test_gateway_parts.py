"""The gateway's parts around its core: the relayed job it builds from a
request, the circuits it knows, the proof it reads back out of a result, its
[gateway] config, its RPC when off, and `mask gateway`'s table for hostile text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from maskd.cli_gateway import gateway_view
from maskd.config import load_config
from maskd.gateway import Gateway
from maskd.gateway_core import KnownCircuit, RequestRecord, State, record_json
from maskd.gateway_work import Refused, build_spec, known_circuits, read_result
from maskd.zk_bundle import pack_zk
from protocol.errors import ConfigError, RpcError
from scheduler.spec import parse_relay
from storage.carfile import write_path_car
from worker.zk import load_zk_bundle
from zkp.circuit import load_circuit, shipped_circuits
from zkp.formats import proof_calldata, proof_to_json, public_to_json, vk_id
from zkp.testing import TrapdoorSetup

STATS = shipped_circuits()["private_stats"]
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
RELAY = parse_relay({"chain_id": 31337, "contract": CONTRACT, "request_id": "9"})
COMMITMENT = 2**200 + 3
VALUES = [str(v) for v in range(1, 17)]


@pytest.fixture(scope="module")
def stats() -> KnownCircuit:
    circuits, problems = known_circuits()
    assert problems == []
    c = load_circuit(STATS)
    return circuits[vk_id(c.vk)]


def record(**change) -> RequestRecord:
    base = dict(
        request_id=9,
        requester=CONTRACT,
        circuit_id="00" * 32,
        inputs=(5000, COMMITMENT),
        n_outputs=3,
        input_cid="bafk",
        payment=7 * 10**18,
        deadline=0,
        callback=CONTRACT,
        block_number=1,
        state=State.PLACING,
        updated_at=0.0,
    )
    return RequestRecord(**{**base, **change})


def test_the_shipped_circuits_are_known_by_vk_id_with_their_layout(stats):
    assert stats.name == "private_stats" and stats.n_outputs == 3
    assert stats.public_inputs == ("threshold", "commitment")  # public order, binding out
    assert Path(stats.path) == STATS.resolve()


def test_extra_circuits_come_from_circuits_dir_and_broken_ones_are_named(tmp_path, stats):
    extra = tmp_path / "circuits"
    shutil.copytree(STATS, extra / "mine")  # the same key: the same circuit id, once
    (extra / "broken").mkdir()
    (extra / "broken" / "circuit.json").write_text("{")
    circuits, problems = known_circuits(str(extra))
    assert stats.circuit_id in circuits and len(circuits) == len(shipped_circuits())
    assert len(problems) == 1 and problems[0].startswith("broken:")
    _, missing = known_circuits(str(tmp_path / "nowhere"))
    assert "gateway.circuits_dir" in missing[0]


def test_the_relayed_job_takes_the_requests_inputs_and_offers_its_payment(tmp_path, stats):
    # the dataset's file names a commitment and a threshold of its own: the request's win
    raw = json.dumps({"values": VALUES, "threshold": "1", "commitment": "2"}).encode()
    spec = build_spec(raw, record(), stats, 3000, RELAY, tmp_path)
    assert spec.relay == RELAY and spec.executor == "zk-groth16"
    assert spec.price.max_total == 7 * 10**18 and spec.price.deadline_seconds == 3000
    assert spec.resources.max_seconds == 120 and spec.name == "request-9"
    assert spec.circuit.value == stats.path
    given = json.loads((tmp_path / "input.json").read_text())
    assert given == {"values": VALUES, "threshold": "5000", "commitment": str(COMMITMENT)}
    # packed as v1.jobs.submit packs it: the relay rides in job.json, which the
    # provider's own loader reads back
    bundle = tmp_path / "bundle"
    bundle.mkdir()

    def place(ref, dest: Path) -> None:
        shutil.copyfile(ref.value, dest)

    zk = pack_zk(spec, bundle, place)
    assert zk.public_inputs == {"threshold": "5000", "commitment": str(COMMITMENT)}
    from maskd.zk_bundle import job_document

    (bundle / "job.json").write_text(json.dumps(job_document(spec)))
    assert load_zk_bundle(bundle, memory_bytes=2 << 30).relay == RELAY
    short = build_spec(raw, record(), stats, 30, RELAY, tmp_path)
    assert short.resources.max_seconds == 30  # a job never outlives its deadline


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"values": "1"' * 2, json.dumps({"binding": "1"}).encode()],
)
def test_an_input_that_is_not_an_object_of_signals_is_refused(tmp_path, stats, raw):
    with pytest.raises(Refused) as refused:
        build_spec(raw, record(), stats, 3000, RELAY, tmp_path)
    assert refused.value.reason == "input_invalid" and refused.value.detail


def result_car(tmp: Path, files: dict[str, str]) -> tuple[Path, str]:
    root = tmp / "result"
    (root / "out").mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    car = tmp / "result.car"
    return car, write_path_car(root, car).cid


def test_the_proof_is_read_back_out_of_the_result_in_calldata_order(tmp_path):
    setup = TrapdoorSetup.new(2, seed=4)
    public = [12345, 678]
    proof = setup.prove(public)
    car, cid = result_car(
        tmp_path,
        {
            "proof.json": json.dumps(proof_to_json(proof)),
            "public.json": json.dumps(public_to_json(public)),
        },
    )
    assert read_result(car, cid) == (list(proof_calldata(proof)), public)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"public.json": '["1"]'}, "no proof.json"),
        ({"proof.json": "{}"}, "no public.json"),
        ({"proof.json": "{}", "public.json": '["1"]'}, "pi_a"),
        ({"proof.json": "[" * 100, "public.json": '["1"]'}, "nested too deeply"),
    ],
)
def test_a_result_without_a_readable_proof_is_a_reason(tmp_path, files, words):
    car, cid = result_car(tmp_path, files)
    with pytest.raises(ValueError) as bad:
        read_result(car, cid)
    assert words in str(bad.value)


# --- config ------------------------------------------------------------------------


def config(**gateway):
    return load_config(env={}, overrides={"gateway": gateway})


def test_the_gateway_is_off_by_default_and_its_keys_are_checked():
    assert not config().gateway.enabled
    ok = config(enabled=True, requests=CONTRACT, min_payment="0")
    assert ok.gateway.requests == CONTRACT and ok.gateway.min_payment == "0"
    cases = [
        ({"requests": "0x1234"}, "gateway.requests", "40 hex"),
        ({"poll_interval_s": 0}, "gateway.poll_interval_s", "greater than 0"),
        ({"max_open": 0}, "gateway.max_open", "between 1"),
        ({"min_payment": "1.5"}, "gateway.min_payment", "decimal string"),
        ({"min_time_left_s": 60}, "gateway.min_time_left_s", "fulfil_margin_s"),
        ({"from_block": -1}, "gateway.from_block", "between 0"),
    ]
    for bad, key, hint in cases:
        with pytest.raises(ConfigError) as err:
            config(**bad)
        assert key in err.value.message and hint in (err.value.message + err.value.hint)


def test_an_enabled_gateway_needs_a_chain_and_on_rpc_the_contract():
    with pytest.raises(ConfigError) as off:
        load_config(env={}, overrides={"gateway": {"enabled": True}, "chain": {"backend": "off"}})
    assert "chain.backend" in off.value.message and off.value.hint
    rpc = {
        "backend": "rpc",
        "rpc_url": "http://127.0.0.1:8545",
        "token": CONTRACT,
        "escrow": CONTRACT,
    }
    with pytest.raises(ConfigError) as missing:
        load_config(env={}, overrides={"gateway": {"enabled": True}, "chain": rpc})
    assert "gateway.requests" in missing.value.message and "ledger.deploy" in missing.value.hint
    env = {"MASK_GATEWAY_ENABLED": "true", "MASK_GATEWAY_REQUESTS": CONTRACT}
    assert load_config(env=env, overrides={"chain": rpc}).gateway.enabled


# --- RPC and CLI ---------------------------------------------------------------------


async def test_an_off_gateway_says_so_and_checks_its_parameters(tmp_path):
    gateway = Gateway(
        config(),
        money=SimpleNamespace(address="0x" + "01" * 20),
        account_key=b"\1" * 32,
        jobs_store=None,
        submit_spec=None,
        cancel_job=None,
        result_car=None,
        storage=None,
        connected_peers=list,
        work_dir=tmp_path,
        supervisor=None,
    )
    shown = await gateway.rpc_show({})
    assert (shown["enabled"], shown["state"], shown["requests"]) == (False, "off", [])
    for limit in (0, "5", True, 10**9):
        with pytest.raises(RpcError) as bad:
            await gateway.rpc_show({"limit": limit})
        assert bad.value.code == "bad_limit"


def render(view) -> str:
    console = Console(width=300, record=True, color_system=None)
    console.print(view)
    return console.export_text()


def test_mask_gateway_shows_a_strangers_text_escaped():
    hostile = record(
        input_cid="\x1b[2J[bold red]bafy\u202eevil",
        state=State.FAILED,
        reason="input_unavailable",
        detail="no peer has \x1b]0;title\x07it",
        requester="[link=x]0xdapp",
    )
    info = {
        "enabled": True,
        "state": "retrying",
        "last_error": "node says \x1b[31mno",
        "contract": CONTRACT,
        "chain_id": 31337,
        "account": "0x" + "01" * 20,
        "next_block": 12,
        "open": 0,
        "max_open": 4,
        "min_payment": "1000000000000000000",
        "circuits": [{"name": "private_stats", "circuit_id": "ab" * 32}, "junk"],
        "circuit_problems": ["broken: \x1b[1m"],
        "total": 2,
        "requests": [
            record_json(hostile),
            record_json(record(state=State.WAITING, request_id=10, input_cid="\x1b[2Jbafy[b]")),
            "junk",
            {},
        ],
    }
    text = render(gateway_view(info, now=0.0))
    assert "\x1b" not in text and "\u202e" not in text
    assert "\\x1b[2J[bold red]bafy" not in text  # the detail (a reason) is shown instead
    assert "input_unavailable: no peer has \\x1b]0;title\\x07it" in text
    assert "input \\x1b[2Jbafy[b]" in text  # a waiting request shows its input CID, escaped
    assert "node says \\x1b[31mno" in text and "retrying" in text
    assert "private_stats" in text and "1 MASK" in text
    assert "off on this node" in render(gateway_view({"enabled": False}, now=0.0))
    assert "off on this node" in render(gateway_view("junk", now=0.0))
