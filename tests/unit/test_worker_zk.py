"""The zk executor's pure part: a stranger's input.json and circuit are data,
bounded and checked; the provider sets the binding; the result files are
snarkjs's formats and verify against the circuit's key."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from maskd.config import load_config
from protocol.errors import ConfigError, JobError
from worker.zk import (
    ZkBundle,
    ZkCode,
    ZkLimits,
    bind_inputs,
    check_signal_names,
    check_zkey,
    load_zk_bundle,
    outputs_json,
    parse_inputs,
    prove_job,
    read_executor,
    read_vk_bytes,
    result_files,
    write_result,
)
from zkp.binding import SNARK_SCALAR_FIELD, job_binding
from zkp.formats import parse_proof, parse_public, parse_vk, vk_id, vk_to_json
from zkp.prover import ProverError
from zkp.testing import TrapdoorSetup
from zkp.verify import verify
from zkp.witness import WitnessError

R = SNARK_SCALAR_FIELD


def refused(code: ZkCode, fn, *args, words: tuple[str, ...] = (), **kw) -> JobError:
    with pytest.raises(JobError) as info:
        fn(*args, **kw)
    err = info.value
    assert err.code == code.value, err.to_dict()
    assert err.hint
    for word in words:
        assert word in err.message, err.message
    return err


# --- input.json -----------------------------------------------------------------------


def test_inputs_are_canonical_decimal_strings_in_order() -> None:
    data = json.dumps(
        {"preimage": [1, "02", str(R - 1)], "m": [[0, 1], [2, 3]], "threshold": 7}
    ).encode()
    assert parse_inputs(data) == {
        "preimage": ["1", "2", str(R - 1)],
        "m": [["0", "1"], ["2", "3"]],
        "threshold": "7",
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[]", ("not an object",)),
        ("7", ("not an object",)),
        ("{", ("not JSON",)),
        ("", ("not JSON",)),
        ('{"x": NaN}', ("not JSON",)),
        ('{"x": 1.5}', ("not JSON",)),
        ('{"x": 1e3}', ("not JSON",)),
        ('{"x": true}', ("x", "boolean")),
        ('{"x": null}', ("x", "null")),
        ('{"x": {"y": 1}}', ("x", "object")),
        ('{"x": -1}', ("x", "outside the field")),
        (f'{{"x": {R}}}', ("x", "outside the field")),
        (f'{{"x": "{R}"}}', ("x", "outside the field")),
        ('{"x": "-1"}', ("x", "not a decimal")),
        ('{"x": "0x10"}', ("x", "not a decimal")),
        ('{"x": " 1"}', ("x", "not a decimal")),
        ('{"x": ""}', ("x", "not a decimal")),
        ('{"x": "1" }'.replace('"1"', '"' + "9" * 100 + '"'), ("x", "not a decimal")),
        ('{"x": []}', ("x", "empty array")),
        ('{"x": [1, [2]]}', ()),  # ragged arrays: the circuit's shape decides; allowed here
        ('{"bad name": 1}', ("not a signal name",)),
        ('{"a.b": 1}', ("not a signal name",)),
        ('{"": 1}', ("not a signal name",)),
        (b'{"x": "\xff"}', ("not JSON",)),
    ],
)
def test_a_bad_input_json_is_refused_with_the_reason(text, words) -> None:
    data = text if isinstance(text, bytes) else text.encode()
    if not words:
        parse_inputs(data)
        return
    refused(ZkCode.INPUT_INVALID, parse_inputs, data, words=words)


def test_deep_nesting_is_refused_before_the_parser_recurses() -> None:
    bomb = b'{"x": ' + b"[" * 200_000 + b"1" + b"]" * 200_000 + b"}"
    refused(ZkCode.INPUT_INVALID, parse_inputs, bomb, words=("deeper than 8",))
    ok = b'{"x": ' + b"[" * 8 + b"1" + b"]" * 8 + b"}"
    assert parse_inputs(ok) == {"x": [[[[[[[["1"]]]]]]]]}
    nine = b'{"x": ' + b"[" * 9 + b"1" + b"]" * 9 + b"}"
    refused(ZkCode.INPUT_INVALID, parse_inputs, nine, words=("deeper than 8",))


def test_a_million_values_are_refused_by_count() -> None:
    bomb = json.dumps({"x": [1] * 1_000_000}).encode()
    refused(ZkCode.INPUT_INVALID, parse_inputs, bomb, words=("more than 65536 values",))
    # the count is over every signal together
    two = json.dumps({"a": [1] * 40_000, "b": [1] * 40_000}).encode()
    refused(ZkCode.INPUT_INVALID, parse_inputs, two, words=("more than 65536 values",))
    assert len(parse_inputs(json.dumps({"x": [1] * 65_536}).encode())["x"]) == 65_536


def test_size_and_name_caps() -> None:
    limits = ZkLimits(max_input_bytes=100, max_signals=3)
    refused(ZkCode.INPUT_INVALID, parse_inputs, b" " * 101, limits, words=("101 bytes",))
    four = json.dumps({k: 1 for k in "abcd"}).encode()
    refused(ZkCode.INPUT_INVALID, parse_inputs, four, limits, words=("4 signals",))
    long = json.dumps({"a" * 129: 1}).encode()
    refused(ZkCode.INPUT_INVALID, parse_inputs, long, words=("not a signal name",))


# --- names and the binding ---------------------------------------------------------------

DECLARED = ("preimage", "binding")


def test_an_unknown_or_missing_signal_is_refused() -> None:
    declared = DECLARED
    check_signal_names({"preimage": ["1", "2"]}, declared)
    err = refused(
        ZkCode.UNKNOWN_INPUT,
        check_signal_names,
        {"preimage": ["1", "2"], "secret": "3"},
        declared,
        words=("'secret'", "preimage"),
    )
    assert "binding" in err.message  # lists what the circuit does take
    refused(ZkCode.UNKNOWN_INPUT, check_signal_names, {}, declared, words=("lacks", "preimage"))
    check_signal_names({"anything": "1"}, None)  # the manifest does not say: the witness will


def test_the_provider_sets_the_binding_and_refuses_a_supplied_one() -> None:
    inputs = {"preimage": ["1", "2"]}
    assert bind_inputs(inputs, 42) == {"preimage": ["1", "2"], "binding": "42"}
    assert inputs == {"preimage": ["1", "2"]}  # not changed in place
    for bad in ({"binding": "42", "preimage": ["1"]}, {"binding": "0"}):
        refused(ZkCode.BINDING_SUPPLIED, bind_inputs, bad, 42, words=("binding",))
        refused(ZkCode.BINDING_SUPPLIED, check_signal_names, bad, DECLARED)


# --- the bundle -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
POSEIDON = ROOT / "circuits" / "build" / "poseidon_preimage"
MEMORY = 128 << 20


def make_bundle(root: Path, inputs: object = None, *, circuit: Path = POSEIDON) -> Path:
    (root / "in").mkdir(parents=True)
    shutil.copytree(circuit, root / "circuit")
    (root / "job.json").write_text(json.dumps({"executor": "zk-groth16", "name": "zk"}))
    body = {"preimage": [1, 2]} if inputs is None else inputs
    (root / "in" / "input.json").write_text(json.dumps(body))
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "bundle")


def load(root: Path, **kw) -> ZkBundle:
    return load_zk_bundle(root, memory_bytes=kw.pop("memory_bytes", MEMORY), **kw)


def test_a_good_bundle_loads(bundle: Path) -> None:
    b = load(bundle)
    assert b.inputs == {"preimage": ["1", "2"]}
    assert b.circuit.name == "poseidon_preimage"
    assert b.circuit.public_names == ("hash", "binding")
    assert b.circuit_bytes == sum(p.stat().st_size for p in (bundle / "circuit").iterdir())
    assert read_executor(bundle) == "zk-groth16"


def test_the_executor_is_read_from_job_json(tmp_path: Path, bundle: Path) -> None:
    (bundle / "job.json").write_text(json.dumps({"args": []}))
    assert read_executor(bundle) == "wasm"  # what every bundle before zk said
    refused(ZkCode.BAD_BUNDLE, load, bundle, words=("zk-groth16",))
    (bundle / "job.json").write_text(json.dumps({"executor": 7}))
    refused(ZkCode.BAD_BUNDLE, read_executor, bundle, words=("not a string",))
    (bundle / "job.json").unlink()
    (bundle / "job.json").symlink_to(tmp_path / "elsewhere.json")
    refused(ZkCode.BAD_BUNDLE, read_executor, bundle, words=("job.json",))


def test_an_unknown_input_signal_is_refused(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b", {"preimage": [1, 2], "salt": 3})
    refused(ZkCode.UNKNOWN_INPUT, load, b, words=("'salt'",))
    b = make_bundle(tmp_path / "c", {"preimage": [1, 2], "binding": 3})
    refused(ZkCode.BINDING_SUPPLIED, load, b)


def _swap_for_symlink(path: Path, target: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("name", ["circuit.zkey", "circuit.wasm", "verification_key.json"])
def test_a_symlink_in_circuit_is_refused(bundle: Path, tmp_path: Path, name: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the provider's key")
    _swap_for_symlink(bundle / "circuit" / name, secret)
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=("symlink",))


def test_circuit_itself_a_symlink_or_missing_is_refused(bundle: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(bundle / "circuit", elsewhere)
    _swap_for_symlink(bundle / "circuit", elsewhere)
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=("symlink",))
    (bundle / "circuit").unlink()
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=("no circuit/",))


def test_special_files_nesting_and_missing_files_are_refused(bundle: Path) -> None:
    os.mkfifo(bundle / "circuit" / "pipe")
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=("FIFO",))
    (bundle / "circuit" / "pipe").unlink()
    (bundle / "circuit" / "sub").mkdir()
    (bundle / "circuit" / "sub" / "x").write_text("x")
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=("flat",))
    shutil.rmtree(bundle / "circuit" / "sub")
    (bundle / "circuit" / "circuit.r1cs").unlink()
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=("circuit.r1cs",))


def test_circuit_caps(bundle: Path) -> None:
    for i in range(12):
        (bundle / "circuit" / f"extra{i}").write_text("x")
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=("over 16 files",))
    for i in range(12):
        (bundle / "circuit" / f"extra{i}").unlink()
    small = ZkLimits(max_circuit_bytes=1 << 20)
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, limits=small, words=("cap of 1048576",))


def test_input_json_must_be_a_regular_file_in_in(bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text('{"preimage": [1, 2]}')
    _swap_for_symlink(bundle / "in" / "input.json", target)
    refused(ZkCode.INPUT_INVALID, load, bundle, words=("input.json",))
    (bundle / "in" / "input.json").unlink()
    refused(ZkCode.BAD_BUNDLE, load, bundle, words=("in/input.json",))
    big = ZkLimits(max_input_bytes=10)
    (bundle / "in" / "input.json").write_text('{"preimage": [1, 2]}')
    refused(ZkCode.INPUT_INVALID, load, bundle, limits=big, words=("cap",))


# --- the proving key's claims -----------------------------------------------------------


def zkey_sections(data: bytes) -> list[tuple[int, int, int]]:
    """(type, offset of its length field, length) of each section."""
    count = struct.unpack_from("<I", data, 8)[0]
    pos, out = 12, []
    for _ in range(count):
        kind, length = struct.unpack_from("<IQ", data, pos)
        out.append((kind, pos + 4, length))
        pos += 12 + length
    return out


def test_the_shipped_proving_keys_pass() -> None:
    header = check_zkey(POSEIDON / "circuit.zkey", memory_bytes=MEMORY)
    assert (header.n_public, header.domain_size) == (2, 256)
    assert header.proving_memory() < 4 << 20


def test_a_zkey_claiming_a_gigabyte_section_is_refused(bundle: Path) -> None:
    path = bundle / "circuit" / "circuit.zkey"
    data = bytearray(path.read_bytes())
    kind, at, _ = zkey_sections(bytes(data))[-1]
    struct.pack_into("<Q", data, at, 1 << 30)
    path.write_bytes(bytes(data))
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=("1073741824-byte section",))


def test_a_zkey_claiming_a_huge_domain_is_refused(bundle: Path) -> None:
    path = bundle / "circuit" / "circuit.zkey"
    good = path.read_bytes()
    header = next(at for kind, at, _ in zkey_sections(good) if kind == 2) + 8
    domain_at = header + 4 + 32 + 4 + 32 + 8  # n8q, q, n8r, r, nVars, nPublic
    assert struct.unpack_from("<I", good, domain_at)[0] == 256
    for claim, words in (
        (1 << 30, ("2^22",)),
        (3 << 10, ("power of two",)),
        (1 << 12, ("section 9",)),  # plausible, but the key does not hold it
    ):
        data = bytearray(good)
        struct.pack_into("<I", data, domain_at, claim)
        path.write_bytes(bytes(data))
        refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=words)


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda d: b"zkez" + d[4:], ("not a zkey",)),
        (lambda d: d[:10], ("not a zkey",)),
        (lambda d: d[:40], ("section",)),
        (lambda d: d[:8] + struct.pack("<I", 10**6) + d[12:], ("10000", "sections")),
    ],
)
def test_a_malformed_zkey_is_refused(bundle: Path, mangle, words) -> None:
    path = bundle / "circuit" / "circuit.zkey"
    path.write_bytes(mangle(path.read_bytes()))
    refused(ZkCode.CIRCUIT_INVALID, load, bundle, words=words)


def test_a_key_too_big_for_the_jobs_memory_is_refused(bundle: Path) -> None:
    # the key's own size is the floor of what proving needs (sizes read, not
    # written down: `make circuits` makes new keys)
    size = (bundle / "circuit" / "circuit.zkey").stat().st_size
    err = refused(
        ZkCode.MEMORY_LIMIT, load, bundle, memory_bytes=100_000, words=(f"{size}-byte key",)
    )
    assert "memory limit of 0.1 MiB" in err.message


# --- proving and the result files -------------------------------------------------------

JOB_ID = "ab" * 32
REQUESTER = "0x" + "11" * 20
PROVIDER = "0x" + "22" * 20
HASH = 7_777_777  # the fake circuit's output


class TrapdoorProver:
    """Proves anything for a trapdoor key: the public signals are (HASH, binding)."""

    name = "trapdoor"

    def __init__(self, setup: TrapdoorSetup, *, public=None, proof=None, error=None):
        self.setup, self.public, self.proof, self.error = setup, public, proof, error
        self.calls: list[tuple[dict, float]] = []

    def prove(self, circuit, inputs, *, deadline_s, cancel=None):
        self.calls.append((dict(inputs), deadline_s))
        if self.error is not None:
            raise self.error
        public = self.public or (HASH, int(inputs["binding"]))
        return self.proof or self.setup.prove(public), public


@pytest.fixture(scope="module")
def setup() -> TrapdoorSetup:
    return TrapdoorSetup.new(2, seed=5)


@pytest.fixture
def trapdoor_bundle(tmp_path: Path, setup: TrapdoorSetup) -> ZkBundle:
    """The poseidon bundle with the trapdoor's key in place of the real one."""
    root = make_bundle(tmp_path / "trapdoor")
    (root / "circuit" / "verification_key.json").write_text(
        json.dumps(vk_to_json(setup.vk), indent=1)
    )
    return load(root)


def terms(circuit_id: str, **kw) -> SimpleNamespace:
    base = dict(
        job_id=JOB_ID,
        requester_account=REQUESTER,
        provider_account=PROVIDER,
        circuit_id=circuit_id,
        memory_mb=128,
        max_seconds=30,
    )
    return SimpleNamespace(**{**base, **kw})


class Ticks:
    """A clock that moves 0.25 s each read."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def test_the_provider_binds_the_job_and_writes_snarkjs_files(
    trapdoor_bundle: ZkBundle, setup: TrapdoorSetup, tmp_path: Path
) -> None:
    t = terms(vk_id(setup.vk))
    prover = TrapdoorProver(setup)
    proved = prove_job(trapdoor_bundle, t, prover, deadline_s=12.5, clock=Ticks())
    binding = job_binding(JOB_ID, REQUESTER, PROVIDER)
    [(seen, deadline)] = prover.calls
    assert seen == {"preimage": ["1", "2"], "binding": str(binding)} and deadline == 12.5
    assert proved.public == (HASH, binding)
    assert (proved.prover, proved.prove_ms, proved.constraints) == ("trapdoor", 250, 241)
    assert proved.circuit_id == vk_id(setup.vk)

    vk_bytes = read_vk_bytes(trapdoor_bundle.circuit.dir.parent)
    files = result_files(proved, vk_bytes, t, b"\x01" * 65)
    write_result(tmp_path / "result", files)
    got = {str(p.relative_to(tmp_path / "result")) for p in (tmp_path / "result").rglob("*")}
    assert got == {"out", *files}
    # what snarkjs reads, and what anyone checks the result with
    r = tmp_path / "result"
    vk = parse_vk(json.loads((r / "verification_key.json").read_text()))
    proof = parse_proof(json.loads((r / "proof.json").read_text()))
    public = parse_public(json.loads((r / "public.json").read_text()))
    assert json.loads((r / "public.json").read_text()) == [str(HASH), str(binding)]
    assert verify(vk, proof, public).valid
    assert (r / "verification_key.json").read_bytes() == vk_bytes  # a copy, byte for byte
    assert json.loads((r / "out" / "outputs.json").read_text()) == {
        "hash": str(HASH),
        "binding": str(binding),
    }
    assert json.loads((r / "zk_result.json").read_text()) == {
        "job_id": JOB_ID,
        "requester": REQUESTER,
        "provider": PROVIDER,
        "circuit_id": vk_id(setup.vk),
        "prover": "trapdoor",
        "prove_ms": 250,
        "constraints": 241,
        "signature": "0x" + "01" * 65,
    }


def test_the_circuit_must_be_the_one_the_agreement_names(
    trapdoor_bundle: ZkBundle, setup: TrapdoorSetup
) -> None:
    prover = TrapdoorProver(setup)
    for named in ("", "00" * 32, vk_id(TrapdoorSetup.new(2, seed=6).vk)):
        refused(
            ZkCode.CIRCUIT_MISMATCH,
            prove_job,
            trapdoor_bundle,
            terms(named),
            prover,
            deadline_s=1,
            clock=Ticks(),
        )
    assert prover.calls == []  # refused before any proving
    upper = "0x" + vk_id(setup.vk).upper()  # the same id, written differently
    prove_job(trapdoor_bundle, terms(upper), prover, deadline_s=1, clock=Ticks())


def test_a_proof_that_does_not_bind_the_job_or_verify_is_never_claimed(
    trapdoor_bundle: ZkBundle, setup: TrapdoorSetup
) -> None:
    t = terms(vk_id(setup.vk))
    binding = job_binding(JOB_ID, REQUESTER, PROVIDER)

    def run(**kw):
        return prove_job(
            trapdoor_bundle, t, TrapdoorProver(setup, **kw), deadline_s=1, clock=Ticks()
        )

    # a circuit that does not make the binding its last public signal
    refused(ZkCode.CIRCUIT_INVALID, run, public=(binding, HASH), words=("last public",))
    short = setup.prove((HASH, binding))
    refused(ZkCode.PROVER_FAILED, run, public=(HASH,), proof=short, words=("1 public signals",))
    # a prover bug: a proof for other public signals
    other = setup.prove((HASH + 1, binding))
    refused(ZkCode.PROVER_FAILED, run, proof=other, words=("does not verify",))


def test_a_circuit_without_usable_output_names_still_reports_its_outputs(
    trapdoor_bundle: ZkBundle, setup: TrapdoorSetup
) -> None:
    proved = prove_job(
        trapdoor_bundle, terms(vk_id(setup.vk)), TrapdoorProver(setup), deadline_s=1, clock=Ticks()
    )
    odd = dataclasses.replace(proved, public_names=("x",))
    assert list(outputs_json(odd)) == ["public[0]", "public[1]"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            WitnessError("assert failed in template Num2Bits line 9", code="witness_assert_failed"),
            ZkCode.CONSTRAINT_FAILED,
        ),
        (
            WitnessError("unknown input signal y", code="witness_input_invalid"),
            ZkCode.INPUT_INVALID,
        ),
        (WitnessError("timeout", code="witness_timeout"), ZkCode.TIMEOUT),
        (WitnessError("fuel", code="witness_out_of_fuel"), ZkCode.TIMEOUT),
        (WitnessError("memory", code="witness_memory_limit"), ZkCode.MEMORY_LIMIT),
        (WitnessError("cancelled", code="witness_cancelled"), ZkCode.CANCELLED),
        (WitnessError("not circom", code="witness_invalid_module"), ZkCode.CIRCUIT_INVALID),
        (ProverError("snarkjs failed: node crashed"), ZkCode.PROVER_FAILED),
        (
            ProverError("snarkjs failed: assert failed: the inputs do not satisfy the circuit"),
            ZkCode.CONSTRAINT_FAILED,
        ),
        (ProverError("circuit.zkey does not match verification_key.json"), ZkCode.CIRCUIT_INVALID),
        (
            ProverError("timeout: proving took longer than 1 s", code="prove_timeout"),
            ZkCode.TIMEOUT,
        ),
        (ProverError("cancelled", code="prove_cancelled"), ZkCode.CANCELLED),
        (ProverError("gone", code="prover_unavailable"), ZkCode.UNSUPPORTED),
        (ProverError("something new", code="prove_exploded"), ZkCode.PROVER_FAILED),
    ],
)
def test_each_prover_failure_is_a_typed_job_failure(
    trapdoor_bundle: ZkBundle, setup: TrapdoorSetup, error: Exception, code: ZkCode
) -> None:
    prover = TrapdoorProver(setup, error=error)
    err = refused(
        code,
        prove_job,
        trapdoor_bundle,
        terms(vk_id(setup.vk)),
        prover,
        deadline_s=1,
        clock=Ticks(),
    )
    assert error.reason in err.message


# --- the operator's choice of prover ------------------------------------------------------


def test_the_zk_prover_setting_is_a_prover_name() -> None:
    assert load_config(env={}).worker.zk_prover == "auto"
    assert load_config(env={"MASK_WORKER_ZK_PROVER": "snarkjs"}).worker.zk_prover == "snarkjs"
    for bad in ("", "Snark JS", "x" * 40, "../bin/sh"):
        with pytest.raises(ConfigError) as info:
            load_config(env={}, overrides={"worker": {"zk_prover": bad}})
        assert "worker.zk_prover" in str(info.value) and info.value.hint


def test_in_must_be_a_directory_not_a_link_to_one(bundle: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(bundle / "in", elsewhere)
    _swap_for_symlink(bundle / "in", elsewhere)
    refused(ZkCode.BAD_BUNDLE, load, bundle, words=("in/", "not a directory"))
    (bundle / "in").unlink()
    (bundle / "in").write_text("a file")
    refused(ZkCode.BAD_BUNDLE, load, bundle, words=("in/",))
