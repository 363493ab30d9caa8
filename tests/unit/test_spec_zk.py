"""zk-groth16 job specs: a circuit instead of a program, one JSON input, and
verify mode zk, which goes with that executor only."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import JobError
from scheduler import spec as spec_module
from scheduler.spec import ZK_RESOURCE_DEFAULTS, ContentRef, load_spec

CID_DIR = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"

VALID = """\
name = "stats"
executor = "zk-groth16"
circuit = "mystats"
inputs = ["input.json"]
[price]
max_total = "1000000000000000"
"""


@pytest.fixture
def job_dir(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "input.json").write_text('{"threshold": "7"}')
    (tmp_path / "mycircuit").mkdir()
    (tmp_path / "mycircuit" / "circuit.json").write_text("{}")
    shipped = tmp_path / "shipped" / "mystats"
    shipped.mkdir(parents=True)
    monkeypatch.setattr(spec_module, "_shipped_circuits", lambda: {"mystats": shipped})
    return tmp_path


def write(job_dir: Path, text: str) -> Path:
    path = job_dir / "job.toml"
    path.write_text(text)
    return path


def edit(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def test_a_shipped_circuit_by_name_with_zk_defaults(job_dir: Path) -> None:
    spec = load_spec(write(job_dir, VALID))
    assert spec.executor == "zk-groth16" and spec.program is None
    assert spec.circuit == ContentRef("path", str(job_dir / "shipped" / "mystats"))
    assert spec.inputs == (ContentRef("path", str(job_dir / "input.json")),)
    assert spec.verify.mode == "zk"  # the only mode a zk job has: the default
    assert spec.resources == ZK_RESOURCE_DEFAULTS
    assert spec.resources.memory_mb >= 1024 and spec.resources.max_fuel is None
    assert spec.zk is None  # filled when the job is submitted, from the circuit itself


@pytest.mark.parametrize(
    ("circuit", "want"),
    [
        ('"mycircuit"', ContentRef("path", "mycircuit")),
        ('"./mycircuit/"', ContentRef("path", "mycircuit")),
        (f'"{CID_DIR}"', ContentRef("cid", CID_DIR)),
    ],
)
def test_a_circuit_folder_or_cid(job_dir: Path, circuit: str, want: ContentRef) -> None:
    spec = load_spec(write(job_dir, edit('circuit = "mystats"', f"circuit = {circuit}")))
    if want.kind == "path":
        want = ContentRef("path", str(job_dir / want.value))
    assert spec.circuit == want


def test_a_folder_next_to_job_toml_wins_over_a_shipped_name(job_dir: Path) -> None:
    (job_dir / "mystats").mkdir()
    spec = load_spec(write(job_dir, VALID))
    assert spec.circuit == ContentRef("path", str(job_dir / "mystats"))


def test_explicit_verify_and_resources(job_dir: Path) -> None:
    text = VALID + '[verify]\nmode = "zk"\n[resources]\ncpu = 2\nmemory_mb = 512\ngpu = 1\n'
    spec = load_spec(write(job_dir, text))
    assert spec.verify.mode == "zk"
    assert (spec.resources.cpu, spec.resources.memory_mb, spec.resources.gpu) == (2, 512, 1)
    assert spec.resources.max_seconds == ZK_RESOURCE_DEFAULTS.max_seconds


INVALID = [
    (('circuit = "mystats"\n', ""), "circuit", "is missing"),
    (('circuit = "mystats"', 'circuit = "nosuch"'), "circuit", "neither a folder"),
    (('circuit = "mystats"', 'circuit = "input.json"'), "circuit", "not a circuit folder"),
    (('circuit = "mystats"', 'circuit = "./gone/"'), "circuit", "does not exist"),
    (('circuit = "mystats"', 'circuit = "bafyNOTACID"'), "circuit", "valid CID"),
    (('circuit = "mystats"', "circuit = 3"), "circuit", "must be a string"),
    (
        ('circuit = "mystats"', 'circuit = "mystats"\nprogram = "input.json"'),
        "program",
        "circuit, not a program",
    ),
    (('circuit = "mystats"', 'circuit = "mystats"\nargs = ["1"]'), "args", "no arguments"),
    (('inputs = ["input.json"]', "inputs = []"), "inputs", "got 0 inputs"),
    (
        ('inputs = ["input.json"]', 'inputs = ["input.json", "mycircuit"]'),
        "inputs",
        "got 2 inputs",
    ),
    (('inputs = ["input.json"]', 'inputs = ["mycircuit"]'), "inputs", "got a folder"),
    (
        ("[price]", '[verify]\nmode = "receipt"\n[price]'),
        "verify.mode",
        "checked by their proof",
    ),
    (
        ("[price]", '[verify]\nmode = "replicate"\n[price]'),
        "verify.mode",
        "checked by their proof",
    ),
    (
        ("[price]", "[resources]\nmax_fuel = 10\n[price]"),
        "resources.max_fuel",
        "only meaningful",
    ),
    (
        ("[price]", "[resources]\nmax_seconds = 400\n[price]"),
        "resources.max_seconds",
        "longer than price.deadline_seconds",
    ),
    (('executor = "zk-groth16"', 'executor = "zk-plonk"'), "executor", "unknown executor"),
]


@pytest.mark.parametrize(
    ("change", "field", "reason"), INVALID, ids=[f"{f}:{r}" for _, f, r in INVALID]
)
def test_invalid_zk_spec_names_field_and_reason(
    job_dir: Path, change, field: str, reason: str
) -> None:
    with pytest.raises(JobError) as info:
        load_spec(write(job_dir, edit(*change)))
    err = info.value
    assert err.code == "spec_invalid"
    assert f"{field}:" in err.message, err.message
    assert reason in err.message, err.message
    assert err.hint


def test_an_unknown_circuit_lists_the_shipped_ones(job_dir: Path) -> None:
    with pytest.raises(JobError) as info:
        load_spec(write(job_dir, edit('circuit = "mystats"', 'circuit = "nosuch"')))
    assert "mystats" in info.value.message
    assert "mask zk circuits" in info.value.hint


def test_zk_mode_is_for_zk_jobs_only(job_dir: Path) -> None:
    (job_dir / "hello.wasm").write_bytes(b"\0asm\x01\0\0\0")
    text = (
        'name = "w"\nexecutor = "wasm"\nprogram = "hello.wasm"\n'
        '[price]\nmax_total = "5"\n[verify]\nmode = "zk"\n'
    )
    with pytest.raises(JobError) as info:
        load_spec(write(job_dir, text))
    assert "verify.mode:" in info.value.message
    assert 'executor = "zk-groth16"' in info.value.message
    assert "receipt" in info.value.hint
    # and native is still only planned
    with pytest.raises(JobError, match="'native' is not supported yet"):
        load_spec(write(job_dir, text.replace('"wasm"', '"native"')))


@pytest.mark.parametrize(
    ("example", "circuit"), [("zk-stats", "private_stats"), ("zk-preimage", "poseidon_preimage")]
)
def test_the_zk_examples_name_shipped_circuits(example: str, circuit: str) -> None:
    from zkp.circuit import shipped_circuits

    root = Path(__file__).resolve().parents[2] / "examples" / example
    spec = load_spec(root / "job.toml")
    assert spec.executor == "zk-groth16" and spec.verify.mode == "zk"
    assert spec.circuit == ContentRef("path", str(shipped_circuits()[circuit].resolve()))
    assert spec.inputs == (ContentRef("path", str(root / "input.json")),)
