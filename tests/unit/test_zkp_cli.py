"""python -m zkp verify: valid (0), invalid with its reason (1), unreadable files and usage (2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zkp.cli import main

CUBIC = Path(__file__).resolve().parents[1] / "data" / "vectors" / "groth16" / "cubic"
ROOT = Path(__file__).resolve().parents[2]


def _args(vk: Path, proof: Path, public: Path, *extra: str) -> list[str]:
    return ["verify", "--vk", str(vk), "--proof", str(proof), "--public", str(public), *extra]


VK, PROOF, PUBLIC = (CUBIC / n for n in ("verification_key.json", "proof.json", "public.json"))


def test_python_m_zkp_verifies_the_snarkjs_proof() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zkp", *_args(VK, PROOF, PUBLIC)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "valid\n", "")


def test_python_m_zkp_imports_no_backend_to_print_help() -> None:
    code = "import sys, zkp.cli; print(sorted(m for m in ('py_ecc', 'zksnake', 'eth_abi') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "[]\n", done.stderr


@pytest.mark.parametrize("backend", ["native", "py_ecc"])
def test_valid_proof_exits_0(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    if backend == "py_ecc":  # one py-ecc run (~1 s), on the second snarkjs proof
        args = _args(VK, CUBIC / "proof2.json", CUBIC / "public2.json", "--backend", "py_ecc")
    else:
        args = _args(VK, PROOF, PUBLIC, "--backend", "native")
    assert main(args) == 0
    assert capsys.readouterr().out == "valid\n"


def test_tampered_public_exits_1_with_the_reason(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    public = tmp_path / "public.json"
    public.write_text('["36"]')
    assert main(_args(VK, PROOF, public)) == 1
    assert capsys.readouterr().out == (
        "invalid: the pairing check failed (the proof does not match the key and public inputs)\n"
    )


def test_malformed_proof_exits_1_with_the_reason(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    proof = json.loads(PROOF.read_text())
    proof["pi_a"][0] = "0x1234"
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(proof))
    assert main(_args(VK, path, PUBLIC)) == 1
    out = capsys.readouterr().out
    assert out == "invalid: proof.pi_a: x is not a decimal string: '0x1234' (hex is not accepted)\n"


def test_json_output(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(_args(VK, PROOF, PUBLIC, "--json")) == 0
    assert json.loads(capsys.readouterr().out) == {
        "valid": True,
        "reason": None,
        "backend": "native",
    }
    public = tmp_path / "public.json"
    public.write_text("[]")
    assert main(_args(VK, PROOF, public, "--json")) == 1
    assert json.loads(capsys.readouterr().out) == {
        "valid": False,
        "reason": "public: 0 signals, but the key takes 1",
        "backend": "native",
    }


def test_missing_file_exits_2_with_a_hint(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(_args(VK, tmp_path / "nope.json", PUBLIC)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"error: cannot read --proof {tmp_path / 'nope.json'}: No such file or directory" in err
    assert "hint:" in err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{not json", "not JSON: "),
        (b"[" * 100_000, "nested deeper than 64 levels"),
        (b" " * ((1 << 20) + 1), "larger than 1048576 bytes"),
    ],
)
def test_unreadable_json_exits_2(tmp_path: Path, capsys, content: bytes, says: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "vk.json"
    path.write_bytes(content)
    assert main(_args(path, PROOF, PUBLIC)) == 2
    out, err = capsys.readouterr()
    assert out == "" and "error: --vk: " in err and says in err and "hint:" in err


def test_a_directory_exits_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(_args(VK, PROOF, tmp_path)) == 2
    assert "error: cannot read --public" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["verify"],
        ["verify", "--vk", "a.json"],
        ["prove"],
        ["verify", "--vk", "a", "--proof", "b", "--public", "c", "--backend", "gnark"],
    ],
)
def test_usage_errors_exit_2_with_a_hint(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error: " in err
    assert "hint: python -m zkp verify --vk verification_key.json" in err
