"""``mask zk circuits|prove|verify``: Groth16 circuits on this machine, no daemon.

These are the local tools a person uses before and after a zk job: see which
circuits ship (with the CID a job names and the vk id the chain knows), make a
proof of their own inputs, and check a proof from anyone (a provider's result,
snarkjs's files). A zk job on the mesh runs the same prover and verifier
(docs/zkp.md); ``mask submit`` of a spec with ``executor = "zk-groth16"`` is
how the work goes to a provider.

Heavy modules (the prover, the pairing backends) load inside the command that
needs them, so ``mask --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from maskd import render

__all__ = ["register"]

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _fail(message: str, hint: str | None = None, code: int = EXIT_UNREADABLE) -> None:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


def _resolve_circuit(ref: str):
    """A shipped circuit's name or a circuit directory -> Circuit (exits 2 if neither)."""
    from protocol.errors import MaskError
    from zkp.circuit import load_circuit, shipped_circuits

    shipped = shipped_circuits()
    path = shipped.get(ref) if ref in shipped else Path(ref)
    if not path.is_dir():
        names = ", ".join(sorted(shipped)) or "none"
        _fail(
            f"no circuit {render.safe_text(ref, max_chars=80)!s}: not a shipped name nor a directory",
            f"shipped circuits: {names} (mask zk circuits); or a folder with circuit.json, "
            "circuit.r1cs, circuit.wasm, circuit.zkey and verification_key.json",
        )
    try:
        return load_circuit(path)
    except MaskError as e:
        _fail(f"circuit {path}: {e.message}", e.hint)


def circuit_summary(circuit) -> dict[str, Any]:
    from zkp.circuit import circuit_cid
    from zkp.formats import vk_id

    return {
        "name": circuit.name,
        "description": circuit.manifest.get("description", ""),
        "constraints": circuit.constraints,
        "public": list(circuit.public_names),
        "outputs": circuit.n_outputs,
        "inputs": circuit.manifest.get("inputs", {}),
        "cid": circuit_cid(circuit.dir),
        "vk_id": vk_id(circuit.vk),
        "dir": str(circuit.dir),
    }


def _read_json(path: str, what: str) -> Any:
    from zkp.formats import ZkFormatError, load_json_file

    try:
        return load_json_file(path)
    except OSError as e:
        _fail(f"cannot read {what} {path}: {e.strerror or type(e).__name__}", "check the path")
    except ZkFormatError as e:
        _fail(f"{what} {path}: {e.reason}", "pass a JSON file of at most 1 MiB")


def _binding(binding: str | None, job_id: str | None, requester: str | None, provider: str | None):
    from zkp.binding import SNARK_SCALAR_FIELD, job_binding

    parts = (job_id, requester, provider)
    if any(parts) and binding is not None:
        _fail("give --binding or --job-id/--requester/--provider, not both")
    if any(parts):
        if not all(parts):
            _fail(
                "--job-id, --requester and --provider go together",
                "the binding is keccak256(jobId, requester, provider) mod r",
            )
        try:
            return job_binding(job_id, requester, provider)
        except ValueError as e:
            _fail(f"cannot compute the binding: {e}", "job id: 64 hex; accounts: 0x addresses")
    if binding is None:
        return 0
    try:
        value = int(binding, 0)
    except ValueError:
        _fail(f"--binding {binding[:80]!r} is not an integer", "e.g. --binding 0 or 0x1234")
    if not 0 <= value < SNARK_SCALAR_FIELD:
        _fail("--binding must lie in [0, r) (r: the BN254 scalar field order)")
    return value


@click.group("zk")
def zk() -> None:
    """Groth16 circuits: list, prove and verify on this machine."""


@zk.command("circuits")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def circuits_cmd(as_json: bool) -> None:
    """The circuits this install ships, with the CID a job names and the vk id
    the chain registers."""
    from zkp.circuit import shipped_circuits

    rows = [
        circuit_summary(_resolve_circuit(str(p))) for _, p in sorted(shipped_circuits().items())
    ]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no circuits shipped (circuits/build is empty: run `make circuits`)")
        return
    for row in rows:
        click.echo(f"{row['name']}  ({row['constraints']:,} constraints)")
        click.echo(f"  {row['description']}")
        click.echo(f"  public: {', '.join(row['public'])}")
        click.echo(f"  cid:    {row['cid']}")
        click.echo(f"  vk id:  {row['vk_id']}")


@zk.command("prove")
@click.argument("circuit")
@click.argument("input_json", metavar="INPUT.json")
@click.option("-o", "--out", "out_dir", required=True, help="Directory for the proof files.")
@click.option("--prover", default="auto", show_default=True, help="native, snarkjs or python.")
@click.option("--binding", help="The binding public input (default 0 for a local proof).")
@click.option("--job-id", help="Compute the binding of this job (64 hex) ...")
@click.option("--requester", help="... between this requester account ...")
@click.option("--provider", help="... and this provider account.")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def prove_cmd(
    circuit: str,
    input_json: str,
    out_dir: str,
    prover: str,
    binding: str | None,
    job_id: str | None,
    requester: str | None,
    provider: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Prove CIRCUIT (a shipped name or a directory) over INPUT.json and write
    proof.json, public.json, verification_key.json and outputs.json to -o
    (snarkjs's formats: `snarkjs groth16 verify` accepts them)."""
    from protocol.errors import MaskError
    from zkp.formats import proof_to_json, public_to_json, vk_to_json
    from zkp.prover import select_prover

    c = _resolve_circuit(circuit)
    inputs = _read_json(input_json, "INPUT.json")
    if not isinstance(inputs, dict):
        _fail("INPUT.json must be a JSON object of input signals", 'e.g. {"preimage": ["1", "2"]}')
    if "binding" in inputs:
        _fail(
            "INPUT.json sets binding itself",
            "remove it; pass --binding or --job-id/--requester/--provider",
        )
    inputs = {**inputs, "binding": str(_binding(binding, job_id, requester, provider))}
    try:
        chosen = select_prover(None if prover == "auto" else prover)
        start = time.monotonic()
        proof, public = chosen.prove(c, inputs, deadline_s=timeout_s)
        seconds = time.monotonic() - start
    except MaskError as e:
        _fail(e.message, e.hint, code=EXIT_INVALID)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    named = dict(zip(c.public_names, (str(x) for x in public), strict=True))
    files = {
        "proof.json": proof_to_json(proof),
        "public.json": public_to_json(public),
        "verification_key.json": vk_to_json(c.vk),
        "outputs.json": named,
    }
    for name, data in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, out / name)
    if as_json:
        _echo_json({"prover": chosen.name, "seconds": seconds, "public": named, "dir": str(out)})
        return
    click.echo(f"proved {c.name} with {chosen.name} in {seconds:.2f} s -> {out}/proof.json")
    for key, value in named.items():
        click.echo(f"  {key} = {value}")


@zk.command("verify")
@click.argument("directory", required=False)
@click.option("--circuit", help="Check against this circuit's key (shipped name or directory).")
@click.option("--vk", help="verification_key.json (default: DIRECTORY's, or --circuit's).")
@click.option("--proof", help="proof.json (default: DIRECTORY/proof.json).")
@click.option("--public", help="public.json (default: DIRECTORY/public.json).")
@click.option("--backend", type=click.Choice(["native", "py_ecc"]), help="Pairing backend.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify_cmd(
    directory: str | None,
    circuit: str | None,
    vk: str | None,
    proof: str | None,
    public: str | None,
    backend: str | None,
    as_json: bool,
) -> None:
    """Check a proof: a directory holding proof.json and public.json (a zk job's
    result, `mask zk prove -o`), or the three files by name. Prints `valid`
    (exit 0) or `invalid: <reason>` (exit 1); unreadable files exit 2.

    Pass --circuit to check against a key you trust rather than the copy that
    came with the proof."""
    from zkp.formats import vk_to_json
    from zkp.verify import default_backend, verify_json

    if directory is None and not (proof and public and (vk or circuit)):
        _fail(
            "say which proof to check",
            "mask zk verify RESULT_DIR [--circuit NAME], or --vk, --proof and --public",
        )
    base = Path(directory) if directory else None
    proof = proof or str(base / "proof.json")
    public = public or str(base / "public.json")
    names: tuple[str, ...] = ()
    if circuit:
        if vk:
            _fail("give --circuit or --vk, not both")
        c = _resolve_circuit(circuit)
        vk_obj = vk_to_json(c.vk)
        names = c.public_names
    else:
        vk_obj = _read_json(vk or str(base / "verification_key.json"), "verification key")
    proof_obj = _read_json(proof, "proof")
    public_obj = _read_json(public, "public signals")
    start = time.monotonic()
    verdict = verify_json(vk_obj, proof_obj, public_obj, backend=backend)
    ms = (time.monotonic() - start) * 1000
    used = backend or default_backend()
    if as_json:
        body: dict[str, Any] = {"valid": verdict.valid, "reason": verdict.reason}
        body.update(backend=used, ms=round(ms, 3))
        if names and verdict.valid:
            body["public"] = dict(zip(names, map(str, public_obj), strict=False))
        _echo_json(body)
    else:
        click.echo("valid" if verdict.valid else f"invalid: {verdict.reason}")
        if names and verdict.valid:
            for key, value in zip(names, public_obj, strict=False):
                click.echo(f"  {key} = {value}")
    sys.exit(0 if verdict.valid else EXIT_INVALID)


def register(main: click.Group) -> None:
    main.add_command(zk)
