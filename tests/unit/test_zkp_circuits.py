"""Circuit directories (zkp.circuit) and the shipped circuits, plus zkp.poseidon.

The shipped circuits are checked against their own build: the manifest's
counts against the .r1cs header and the verification key. A circuit directory
from a requester is hostile: symlinks, missing, empty, oversize and
non-regular files and bad manifests are refused with reasons.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from storage.unixfs import import_path
from zkp.binding import SNARK_SCALAR_FIELD
from zkp.circuit import (
    CIRCUIT_FILES,
    CircuitError,
    CircuitLimits,
    check_manifest,
    circuit_cid,
    load_circuit,
    shipped_circuits,
)
from zkp.poseidon import poseidon

SHIPPED = shipped_circuits()


@pytest.fixture
def circuit_dir(tmp_path: Path) -> Path:
    """A copy of poseidon_preimage to break."""
    dest = tmp_path / "c"
    shutil.copytree(SHIPPED["poseidon_preimage"], dest)
    return dest


def _r1cs_header(path: Path) -> dict[str, int]:
    """nPubOut, nPubIn, nPrvIn, nConstraints from circom's .r1cs (section 1)."""
    data = path.read_bytes()
    assert data[:4] == b"r1cs"
    (count,) = struct.unpack_from("<I", data, 8)
    pos = 12
    for _ in range(count):
        kind, size = struct.unpack_from("<IQ", data, pos)
        pos += 12
        if kind == 1:
            (n8,) = struct.unpack_from("<I", data, pos)
            at = pos + 4 + n8
            wires, outs, pub_in, prv_in = struct.unpack_from("<IIII", data, at)
            (constraints,) = struct.unpack_from("<I", data, at + 24)
            return {"outputs": outs, "public_inputs": pub_in, "constraints": constraints}
        pos += size
    raise AssertionError("no header section")


# --- the shipped circuits ------------------------------------------------------------


def test_both_circuits_ship() -> None:
    assert {"poseidon_preimage", "private_stats"} <= set(SHIPPED)


@pytest.mark.parametrize("name", ["poseidon_preimage", "private_stats"])
def test_shipped_circuit_agrees_with_its_build(name: str) -> None:
    circuit = load_circuit(SHIPPED[name])
    header = _r1cs_header(circuit.r1cs_path)
    assert circuit.name == name
    assert circuit.public_names[-1] == "binding"
    assert circuit.constraints == header["constraints"]
    assert circuit.n_outputs == header["outputs"]
    assert circuit.vk.n_public == header["outputs"] + header["public_inputs"]
    assert circuit.vk.n_public == len(circuit.public_names)
    assert circuit.manifest["protocol"] == "groth16" and circuit.manifest["curve"] == "bn128"


def test_shipped_manifests_name_their_signals() -> None:
    stats = load_circuit(SHIPPED["private_stats"])
    assert stats.public_names == (
        "sum",
        "count_above",
        "mean_floor",
        "threshold",
        "commitment",
        "binding",
    )
    assert stats.input_names == ("values", "threshold", "commitment", "binding")
    preimage = load_circuit(SHIPPED["poseidon_preimage"])
    assert preimage.public_names == ("hash", "binding")
    assert preimage.input_names == ("preimage", "binding")


def test_circuit_cid_is_the_directory_cid_of_its_five_files(circuit_dir: Path) -> None:
    cid = circuit_cid(circuit_dir)
    assert cid == import_path(circuit_dir, lambda c, b: None).cid
    assert cid.startswith("bafy")
    (circuit_dir / "notes.txt").write_text("not part of the circuit")
    assert circuit_cid(circuit_dir) == cid  # only the five files count
    data = json.loads((circuit_dir / "circuit.json").read_text())
    data["description"] = "changed"
    (circuit_dir / "circuit.json").write_text(json.dumps(data))
    assert circuit_cid(circuit_dir) != cid


def test_shipped_circuits_skips_files_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a_circuit").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    (tmp_path / "linked").symlink_to(tmp_path / "a_circuit")
    assert list(shipped_circuits(tmp_path)) == ["a_circuit"]
    assert shipped_circuits(tmp_path / "missing") == {}


# --- hostile directories --------------------------------------------------------------


@pytest.mark.parametrize("name", CIRCUIT_FILES)
def test_a_missing_file_is_named(circuit_dir: Path, name: str) -> None:
    (circuit_dir / name).unlink()
    with pytest.raises(CircuitError, match=f"{name} is missing"):
        load_circuit(circuit_dir)


@pytest.mark.parametrize("name", CIRCUIT_FILES)
def test_a_symlinked_file_is_refused(circuit_dir: Path, tmp_path: Path, name: str) -> None:
    target = tmp_path / f"elsewhere-{name}"
    shutil.move(circuit_dir / name, target)
    (circuit_dir / name).symlink_to(target)
    with pytest.raises(CircuitError, match="symlink"):
        load_circuit(circuit_dir)
    with pytest.raises(CircuitError, match="symlink"):
        circuit_cid(circuit_dir)


def test_a_symlinked_directory_is_refused(circuit_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(circuit_dir)
    with pytest.raises(CircuitError, match="not a directory"):
        load_circuit(link)


def test_a_fifo_is_not_a_regular_file(circuit_dir: Path) -> None:
    (circuit_dir / "circuit.wasm").unlink()
    os.mkfifo(circuit_dir / "circuit.wasm")
    with pytest.raises(CircuitError, match="not a regular file"):
        load_circuit(circuit_dir)  # and does not block opening it


def test_an_empty_file_is_refused(circuit_dir: Path) -> None:
    (circuit_dir / "circuit.zkey").write_bytes(b"")
    with pytest.raises(CircuitError, match="circuit.zkey is empty"):
        load_circuit(circuit_dir)


@pytest.mark.parametrize(
    ("limits", "name"),
    [
        (CircuitLimits(max_r1cs_bytes=1000), "circuit.r1cs"),
        (CircuitLimits(max_wasm_bytes=1000), "circuit.wasm"),
        (CircuitLimits(max_zkey_bytes=1000), "circuit.zkey"),
        (CircuitLimits(max_json_bytes=100), "circuit.json"),
    ],
)
def test_oversize_files_are_refused_before_reading(
    circuit_dir: Path, limits: CircuitLimits, name: str
) -> None:
    with pytest.raises(CircuitError, match=f"{name} is .* over the") as info:
        load_circuit(circuit_dir, limits)
    assert info.value.hint


def test_a_verification_key_that_is_not_one_is_refused(circuit_dir: Path) -> None:
    (circuit_dir / "verification_key.json").write_text('{"protocol": "plonk"}')
    with pytest.raises(CircuitError, match="verification_key.json"):
        load_circuit(circuit_dir)
    (circuit_dir / "verification_key.json").write_text("[" * 100_000)
    with pytest.raises(CircuitError, match="not JSON"):
        load_circuit(circuit_dir)


def test_public_count_must_match_the_key(circuit_dir: Path) -> None:
    path = circuit_dir / "circuit.json"
    data = json.loads(path.read_text())
    data["public"] = ["extra", *data["public"]]
    data["outputs"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(CircuitError, match="2 public inputs, circuit.json names 3"):
        load_circuit(circuit_dir)


def _manifest() -> dict:
    return json.loads((SHIPPED["private_stats"] / "circuit.json").read_text())


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m.update(name="../evil"), "name must be"),
        (lambda m: m.update(name=7), "name must be"),
        (lambda m: m.update(protocol="plonk"), "protocol must be groth16"),
        (lambda m: m.update(curve="bls12381"), "curve must be bn128"),
        (lambda m: m.update(public=[]), "public is empty"),
        (lambda m: m.update(public="sum"), "public must be a list"),
        (lambda m: m.update(public=[*m["public"][:-1], "nonce"]), "not 'binding'"),
        (lambda m: m.update(public=["sum", "sum", *m["public"][2:]]), "names a signal twice"),
        (lambda m: m.update(public=["a b", *m["public"][1:]]), "not a signal name"),
        (lambda m: m.update(outputs=-1), "outputs must be an integer"),
        (lambda m: m.update(outputs=True), "outputs must be an integer"),
        (lambda m: m.update(outputs=6), "outputs must be an integer"),
        (lambda m: m.update(constraints="many"), "constraints must be an integer"),
        (lambda m: m.update(constraints=0), "constraints must be an integer"),
        (lambda m: m.update(inputs=[]), "inputs must be"),
        (lambda m: m["inputs"].update(extra=[]), "inputs must be"),
        (lambda m: m["inputs"].update(public=["threshold"]), "inputs.public must be"),
        (lambda m: m["inputs"].update(private=["values", "threshold"]), "both a private"),
        (lambda m: m.update(description="x" * 5000), "description"),
    ],
)
def test_bad_manifests_are_refused_with_reasons(change, reason: str) -> None:
    manifest = _manifest()
    change(manifest)
    with pytest.raises(CircuitError, match=reason) as info:
        check_manifest(manifest)
    assert info.value.code == "circuit_invalid"
    assert info.value.hint


def test_a_manifest_that_is_not_an_object_is_refused() -> None:
    for bad in ([], "x", None, 3):
        with pytest.raises(CircuitError, match="not a JSON object"):
            check_manifest(bad)


def test_a_good_manifest_is_normalised() -> None:
    manifest = _manifest()
    manifest["unknown_field"] = "ignored"
    checked = check_manifest(manifest)
    assert "unknown_field" not in checked
    assert checked["public"][-1] == "binding"


# --- Poseidon (the commitment private_stats checks) ------------------------------------


def test_poseidon_known_vectors() -> None:
    # circomlibjs's test vectors for Poseidon([1, 2]) and Poseidon([1, 2, 3, 4])
    assert poseidon([1, 2]) == (
        7853200120776062878684798364095072458815029376092732009249414926327459813530
    )
    assert poseidon([1, 2, 3, 4]) == (
        18821383157269793795438455681495246036402687001665670618754263018637548127333
    )


def test_poseidon_refuses_what_circomlib_cannot_hash() -> None:
    for bad in ([], list(range(17)), [SNARK_SCALAR_FIELD], [-1], [True], ["1"]):
        with pytest.raises(ValueError):
            poseidon(bad)


def test_deep_json_in_a_circuit_is_refused_once_py_ecc_raised_the_recursion_limit(
    circuit_dir: Path,
) -> None:
    """A requester's verification_key.json of 100,000 brackets, read in a process
    where py-ecc has raised the recursion limit (as in every daemon): refused
    with a reason, not a segfault (it crashed the test process once). In a
    child process, so a regression fails this test rather than the whole run."""
    import subprocess
    import sys

    (circuit_dir / "verification_key.json").write_text("[" * 100_000)
    script = (
        "import sys, py_ecc.optimized_bn128\n"
        "assert sys.getrecursionlimit() >= 100_000\n"
        "from zkp.circuit import CircuitError, load_circuit\n"
        "try:\n"
        f"    load_circuit({str(circuit_dir)!r})\n"
        "except CircuitError as e:\n"
        "    print('refused:', e)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused: verification_key.json is not JSON: nested deeper than" in run.stdout
