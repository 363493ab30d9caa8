"""``mask submit|jobs|job|result|cancel|explain``: jobs from the command line.

A job's name, state, error, explanation and logs were written by a requester,
a provider or the job itself: they are shown through ``render.untrusted`` /
``render.safe_text`` (never markup, escapes made visible). ``mask job ID
--logs`` is the exception when stdout is not a terminal: then it writes the
job's output exactly as it was, for files and pipes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from maskd import render
from protocol.errors import JobError

pass_state = click.pass_obj  # the group's CliState (see cli_storage for why not imported)

TERMINAL = {"completed", "failed", "cancelled"}


def _console() -> Console:
    return Console(highlight=False, width=None if os.isatty(1) else 160)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _safe(value: Any) -> str:
    return render.safe_text(value, max_chars=render.CELL_MAX_CHARS)


def _field(label: str, value: Any, style: str = "bold") -> Text:
    """``           state failed``: our label, their value."""
    return Text.assemble((f"{label:>16}", style), " ", render.untrusted(value, multiline=True))


def _clock(at: Any) -> str:
    if not isinstance(at, int | float) or isinstance(at, bool):
        return render.DASH
    try:
        return time.strftime("%H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):
        return render.DASH


def _follow(state, job_id: str, *, quiet: bool, timeout: float | None = None) -> dict:
    """Follow a job's states over v1.watch until it ends; returns the final job."""
    from maskd.client import Client

    job = state.call("v1.jobs.get", {"job_id": job_id})
    last = job["state"]
    if not quiet:
        click.echo(f"{_safe(job_id)}  {_safe(last)}", err=True)
    if last in TERMINAL:
        return job
    deadline = None if timeout is None else time.monotonic() + timeout
    with Client.connect(state.socket) as client:
        for event in client.watch():
            if event.get("type") == "job.state" and event.get("job_id") == job_id:
                if event.get("state") != last:
                    last = event.get("state")
                    if not quiet:
                        click.echo(f"{_safe(job_id)}  {_safe(last)}", err=True)
                if last in TERMINAL:
                    break
            if deadline is not None and time.monotonic() > deadline:
                break
    return state.call("v1.jobs.get", {"job_id": job_id})


@click.command("submit")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.option("--wait", is_flag=True, help="Follow the job; exit 0 only if it completes.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def submit(state, spec: str, wait: bool, as_json: bool) -> None:
    """Submit JOB.toml to the mesh; print the job id."""
    out = state.call("v1.jobs.submit", {"path": os.path.abspath(spec)})
    if wait:
        out = _follow(state, out["job_id"], quiet=as_json)
    if as_json:
        _json(out)
    else:
        click.echo(_safe(out["job_id"]))
    if wait and out["state"] != "completed":
        err = out.get("error") or {}
        raise JobError(
            f"job {out['job_id']} ended {out['state']}"
            + (f": {err.get('message')}" if err else ""),
            code="job_not_completed",
            hint=f"`mask explain {out['job_id']}` says why",
        )


@click.command("jobs")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def jobs(state, as_json: bool) -> None:
    """Jobs this node requested or ran."""
    rows = state.call("v1.jobs.list")
    if as_json:
        _json(rows)
        return
    table = Table(title=f"{len(rows)} jobs")
    for col in ("job", "role", "name", "state", "provider", "price", "output"):
        table.add_column(col)
    for r in rows:
        cells = (
            r.get("job_id"),
            r.get("role"),
            r.get("name") or "",
            r.get("state"),
            str(r.get("provider") or "")[-8:],
            r.get("price") or "",
            str(r.get("output_cid") or "")[:16],
        )
        table.add_row(*(render.untrusted(cell, max_chars=render.CELL_MAX_CHARS) for cell in cells))
    _console().print(table)


@click.command("job")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--follow", is_flag=True, help="Print state changes until the job ends.")
@click.option(
    "--logs",
    is_flag=True,
    help="Print the job's stdout and stderr (once it has a result; failed runs too).",
)
@pass_state
def job(state, job_id: str, as_json: bool, follow: bool, logs: bool) -> None:
    """One job: state, provider, price, usage, output, error; a zk job's proof."""
    data = (
        _follow(state, job_id, quiet=as_json)
        if follow
        else state.call("v1.jobs.get", {"job_id": job_id})
    )
    if logs:
        data["logs"] = state.call("v1.jobs.logs", {"job_id": job_id})
    if as_json:
        _json(data)
        return
    c = _console()
    for key in (
        "job_id",
        "role",
        "name",
        "state",
        "provider",
        "provider_account",
        "price",
        "output_cid",
    ):
        c.print(_field(key, data.get(key) or "-"))
    if data.get("usage"):
        c.print(_field("usage", data["usage"]))
    for label, value in render.zk_rows(data):
        c.print(_field(label, value))
    payment = _payment(data.get("payment"))
    if payment:
        c.print(_field("payment", payment))
    if data.get("error"):
        c.print(_field("error", _error(data["error"]), style="bold red"))
        if data.get("output_cid") and not logs:
            c.print(Text(f"{'':>16} the run's stdout and stderr: mask job {_safe(job_id)} --logs"))
    transitions = data.get("transitions")
    for t in transitions if isinstance(transitions, list) else []:
        if not isinstance(t, dict):
            continue
        moved = f"{t.get('from')} -> {t.get('to')} ({t.get('event')})"
        c.print(Text(f"{'':>16} {_clock(t.get('at'))} ") + render.untrusted(moved))
    if logs:
        _print_logs(c, data["logs"])


def _payment(payment: Any) -> str:
    """How the job was paid, when it was not the usual voucher (zk claims on chain)."""
    if not isinstance(payment, dict):
        return ""
    state = payment.get("state")
    if state == "paid_by_proof":  # requester: a provider claimed it with its proof
        claims = payment.get("claims") if isinstance(payment.get("claims"), list) else []
        paid = ", ".join(
            f"{c.get('amount')} base units to {c.get('provider')}"
            for c in claims
            if isinstance(c, dict)
        )
        return f"paid on chain by the provider's proof ({paid})"
    claim = payment.get("claim") if isinstance(payment.get("claim"), dict) else None
    if state == "paid_by_claim" and claim:
        return f"paid on chain by this provider's proof ({claim.get('amount')} base units)"
    if claim:
        reason = f": {claim.get('reason')}" if claim.get("reason") else ""
        return f"{state}; claim on chain with the proof {claim.get('status')}{reason}"
    return ""


def _error(error: Any) -> Any:
    """``code: message`` for a job's error; the rejected results are listed above it."""
    if isinstance(error, dict) and "verification_failures" in error:
        return f"{error.get('code')}: {error.get('message')}"
    return error


def _print_logs(c: Console, lg: Any) -> None:
    """The run's stdout and stderr: made safe on a terminal, exact into a pipe."""
    if not isinstance(lg, dict) or not lg.get("available", True):
        c.print("no logs here (yet): the job has no result, or it is still being fetched")
        return
    stdout, stderr = str(lg.get("stdout") or ""), str(lg.get("stderr") or "")
    if not _stdout_is_terminal():
        click.echo("stdout")
        click.echo(stdout or "(empty)", nl=not stdout.endswith("\n"), color=True)
        if stderr:
            click.echo("stderr")
            click.echo(stderr, nl=not stderr.endswith("\n"), color=True)
        return
    c.print(Text("stdout", style="bold"))
    c.print(render.untrusted(stdout or "(empty)", multiline=True))
    if stderr:
        c.print(Text("stderr", style="bold"))
        c.print(render.untrusted(stderr, multiline=True))


@click.command("result")
@click.argument("job_id")
@click.option(
    "-o", "--output", "dest", required=True, type=click.Path(), help="Directory to create."
)
@pass_state
def result(state, job_id: str, dest: str) -> None:
    """Write a completed job's result (out/, stdout.log, stderr.log) into DIR.

    A zk job's also holds proof.json, public.json and verification_key.json (the
    key this node checked the proof against), so snarkjs can check it too."""
    out = state.call("v1.jobs.result", {"job_id": job_id, "dest": os.path.abspath(dest)})
    click.echo(f"{_safe(out['dest'])}  ({_safe(out['output_cid'])})")


@click.command("cancel")
@click.argument("job_id")
@pass_state
def cancel(state, job_id: str) -> None:
    """Cancel a job everywhere."""
    out = state.call("v1.jobs.cancel", {"job_id": job_id})
    click.echo(f"{_safe(job_id)}  {_safe(out['state'])}")


@click.command("explain")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def explain(state, job_id: str, as_json: bool) -> None:
    """Why is my job pending (or why did it fail)?"""
    data = state.call("v1.jobs.explain", {"job_id": job_id})
    if as_json:
        _json(data)
        return
    # Refusals quote providers' reasons: their text, our terminal.
    click.echo(render.safe_text(data.get("text") or json.dumps(data, indent=2), multiline=True))


def register(main: click.Group) -> None:
    for cmd in (submit, jobs, job, result, cancel, explain):
        main.add_command(cmd)
