"""The job spec loader: one valid spec, then every way to get it wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import JobError
from scheduler.spec import ContentRef, JobSpec, load_spec

CID_V1 = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
CID_V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"

VALID = """\
name = "hello"
executor = "wasm"
program = "hello.wasm"
args = ["10"]
inputs = ["data/"]
[resources]
cpu = 1
memory_mb = 128
max_seconds = 60
max_fuel = 2_000_000_000
[price]
max_total = "1000000000000000"
deadline_seconds = 300
[verify]
mode = "receipt"
"""


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "hello.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a\n")
    return tmp_path


def write(job_dir: Path, text: str) -> Path:
    path = job_dir / "job.toml"
    path.write_text(text)
    return path


def edit(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def test_valid_spec_loads(job_dir: Path) -> None:
    spec = load_spec(write(job_dir, VALID))
    assert isinstance(spec, JobSpec)
    assert spec.name == "hello"
    assert spec.executor == "wasm"
    assert spec.program == ContentRef("path", str(job_dir / "hello.wasm"))
    assert spec.args == ("10",)
    assert spec.inputs == (ContentRef("path", str(job_dir / "data")),)
    assert spec.inputs[0].name == "data"
    assert (spec.resources.cpu, spec.resources.memory_mb, spec.resources.max_seconds) == (
        1,
        128,
        60,
    )
    assert spec.resources.max_fuel == 2_000_000_000
    assert spec.price.max_total == 1_000_000_000_000_000
    assert spec.price.deadline_seconds == 300
    assert spec.verify.mode == "receipt"


def test_paths_resolve_against_spec_folder_not_cwd(job_dir: Path, monkeypatch) -> None:
    path = write(job_dir, VALID)
    monkeypatch.chdir("/")
    assert load_spec(path).program.value == str(job_dir / "hello.wasm")


def test_defaults_fill_optional_sections(job_dir: Path) -> None:
    minimal = 'name = "m"\nexecutor = "wasm"\nprogram = "hello.wasm"\n[price]\nmax_total = "5"\n'
    spec = load_spec(write(job_dir, minimal))
    assert spec.args == () and spec.inputs == ()
    assert spec.resources.cpu == 1 and spec.resources.max_fuel is None
    assert spec.price.deadline_seconds == 300
    assert spec.verify.mode == "receipt"


@pytest.mark.parametrize("cid", [CID_V1, CID_V0])
def test_cids_accepted_for_program_and_inputs(job_dir: Path, cid: str) -> None:
    text = edit('program = "hello.wasm"', f'program = "{cid}"')
    text = text.replace('inputs = ["data/"]', f'inputs = ["{cid}", "data"]')
    spec = load_spec(write(job_dir, text))
    assert spec.program == ContentRef("cid", cid)
    assert spec.inputs[0] == ContentRef("cid", cid)
    assert spec.inputs[1].kind == "path"


def test_spec_is_frozen(job_dir: Path) -> None:
    spec = load_spec(write(job_dir, VALID))
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


# (replace this, with that) -> (field named in the message, words of the reason)
INVALID = [
    (("[verify]", "colour = 1\n[verify]"), "price.colour", "unknown key"),
    (('name = "hello"', 'name = "hello"\nprogam = "x"'), "progam", "unknown key"),
    (("cpu = 1", "cpu = 1\ngpus = 1"), "resources.gpus", "unknown key"),
    (('mode = "receipt"', 'mode = "receipt"\nk = 3'), "verify.k", "unknown key"),
    (('name = "hello"\n', ""), "name", "missing"),
    (('name = "hello"', "name = 3"), "name", "must be a string"),
    (('name = "hello"', 'name = "bad name!"'), "name", "not a valid job name"),
    (('executor = "wasm"\n', ""), "executor", "missing"),
    (('executor = "wasm"', 'executor = "docker"'), "executor", "unknown executor"),
    (('executor = "wasm"', 'executor = "native"'), "executor", "not supported yet"),
    (('program = "hello.wasm"\n', ""), "program", "missing"),
    (('program = "hello.wasm"', 'program = "nope.wasm"'), "program", "does not exist"),
    (('program = "hello.wasm"', 'program = "data"'), "program", "not a file"),
    (('program = "hello.wasm"', 'program = ""'), "program", "empty"),
    (('program = "hello.wasm"', 'program = "bafyNOTACID"'), "program", "valid CID"),
    (('program = "hello.wasm"', 'program = "Qm123"'), "program", "valid CID"),
    (('args = ["10"]', "args = [10]"), "args[0]", "must be a string"),
    (('args = ["10"]', 'args = "10"'), "args", "must be a list"),
    (('inputs = ["data/"]', 'inputs = ["missing/"]'), "inputs[0]", "does not exist"),
    (('inputs = ["data/"]', 'inputs = ["data", "data/"]'), "inputs[1]", "mounted as /in/data"),
    (('inputs = ["data/"]', "inputs = [1]"), "inputs[0]", "must be a path"),
    (("cpu = 1", "cpu = 0"), "resources.cpu", "out of range"),
    (("cpu = 1", "cpu = true"), "resources.cpu", "must be an integer"),
    (("cpu = 1", "cpu = 1.5"), "resources.cpu", "must be an integer"),
    (("cpu = 1", 'cpu = "1"'), "resources.cpu", "must be an integer"),
    (("memory_mb = 128", "memory_mb = 0"), "resources.memory_mb", "out of range"),
    (("memory_mb = 128", "memory_mb = 1048577"), "resources.memory_mb", "out of range"),
    (("memory_mb = 128", "memory_mb = -5"), "resources.memory_mb", "out of range"),
    (("max_seconds = 60", "max_seconds = 0"), "resources.max_seconds", "out of range"),
    (
        ("max_seconds = 60", "max_seconds = 301"),
        "resources.max_seconds",
        "longer than price.deadline_seconds",
    ),
    (("max_fuel = 2_000_000_000", "max_fuel = 0"), "resources.max_fuel", "out of range"),
    (("cpu = 1", "cpu = 1\ngpu = 1"), "resources.gpu", "cannot use a GPU"),
    (
        ('max_total = "1000000000000000"', 'max_total = "-1"'),
        "price.max_total",
        "not a non-negative integer",
    ),
    (
        ('max_total = "1000000000000000"', 'max_total = "1.5"'),
        "price.max_total",
        "not a non-negative integer",
    ),
    (
        ('max_total = "1000000000000000"', 'max_total = "1e18"'),
        "price.max_total",
        "not a non-negative integer",
    ),
    (('max_total = "1000000000000000"', 'max_total = "0"'), "price.max_total", "out of range"),
    (
        ('max_total = "1000000000000000"', f'max_total = "{2**256}"'),
        "price.max_total",
        "out of range",
    ),
    (
        ('max_total = "1000000000000000"', "max_total = 1000"),
        "price.max_total",
        "must be a string of digits",
    ),
    (('max_total = "1000000000000000"\n', ""), "price.max_total", "missing"),
    (("deadline_seconds = 300", "deadline_seconds = 0"), "price.deadline_seconds", "out of range"),
    (('mode = "receipt"', 'mode = "magic"'), "verify.mode", "unknown verify mode"),
    (('mode = "receipt"', 'mode = "majority"'), "verify.mode", "unknown verify mode"),
    (('mode = "receipt"', 'mode = "receipt"\nreplicas = 3'), "verify.replicas", "only mode"),
    (
        ('mode = "receipt"', 'mode = "receipt"\nspot_check = 1.5'),
        "verify.spot_check",
        "not a fraction",
    ),
    (('mode = "receipt"', 'mode = "replicate"\nreplicas = 1'), "verify.replicas", "out of range"),
    (('mode = "receipt"', 'mode = "freivalds"\na = "../x"'), "verify.a", "plain file name"),
    (('mode = "receipt"', 'mode = "zk"'), "verify.mode", 'only executor = "zk-groth16"'),
    (('name = "hello"', 'name = "hello"\ncircuit = "data"'), "circuit", "only zk-groth16 jobs"),
]


@pytest.mark.parametrize(
    ("change", "field", "reason"), INVALID, ids=[f"{f}:{r}" for _, f, r in INVALID]
)
def test_invalid_spec_names_field_and_reason(
    job_dir: Path, change, field: str, reason: str
) -> None:
    with pytest.raises(JobError) as info:
        load_spec(write(job_dir, edit(*change)))
    err = info.value
    assert err.code == "spec_invalid"
    assert f"{field}:" in err.message, err.message
    assert reason in err.message, err.message
    assert err.hint


def test_section_must_be_a_table(job_dir: Path) -> None:
    text = 'name = "m"\nexecutor = "wasm"\nprogram = "hello.wasm"\nresources = 3\n[price]\nmax_total = "5"\n'
    with pytest.raises(JobError, match="resources: must be a table") as info:
        load_spec(write(job_dir, text))
    assert info.value.code == "spec_invalid"


def test_price_table_is_required(job_dir: Path) -> None:
    text = VALID.split("[price]")[0]
    with pytest.raises(JobError, match="price: the \\[price\\] table is missing") as info:
        load_spec(write(job_dir, text))
    assert info.value.code == "spec_invalid"


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="does not exist") as info:
        load_spec(tmp_path / "job.toml")
    assert info.value.code == "spec_invalid"


def test_bad_toml_reports_position(job_dir: Path) -> None:
    with pytest.raises(JobError, match="not valid TOML.*line 1") as info:
        load_spec(write(job_dir, "name = \n"))
    assert info.value.code == "spec_invalid"
