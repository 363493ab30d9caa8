"""``mask submit|jobs|job|result|cancel|explain``: jobs from the command line."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from protocol.errors import JobError

pass_state = click.pass_obj  # the group's CliState (see cli_storage for why not imported)

TERMINAL = {"completed", "failed", "cancelled"}


def _console() -> Console:
    return Console(highlight=False, width=None if os.isatty(1) else 160)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _follow(state, job_id: str, *, quiet: bool, timeout: float | None = None) -> dict:
    """Follow a job's states over v1.watch until it ends; returns the final job."""
    from maskd.client import Client

    job = state.call("v1.jobs.get", {"job_id": job_id})
    last = job["state"]
    if not quiet:
        click.echo(f"{job_id}  {last}", err=True)
    if last in TERMINAL:
        return job
    deadline = None if timeout is None else time.monotonic() + timeout
    with Client.connect(state.socket) as client:
        for event in client.watch():
            if event.get("type") == "job.state" and event.get("job_id") == job_id:
                if event["state"] != last:
                    last = event["state"]
                    if not quiet:
                        click.echo(f"{job_id}  {last}", err=True)
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
        click.echo(out["job_id"])
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
        table.add_row(
            r["job_id"],
            r["role"],
            r.get("name") or "",
            r["state"],
            (r.get("provider") or "")[-8:],
            r.get("price") or "",
            (r.get("output_cid") or "")[:16],
        )
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
    """One job: state, provider, price, usage, output, error."""
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
        c.print(f"[bold]{key:>16}[/] {data.get(key) or '-'}")
    if data.get("usage"):
        c.print(f"[bold]{'usage':>16}[/] {data['usage']}")
    if data.get("error"):
        c.print(f"[bold red]{'error':>16}[/] {data['error']}")
        if data.get("output_cid") and not logs:
            c.print(f"{'':>16} the run's stdout and stderr: mask job {job_id} --logs")
    for t in data.get("transitions", []):
        c.print(
            f"{'':>16} {time.strftime('%H:%M:%S', time.localtime(t['at']))} {t['from']} -> {t['to']} ({t['event']})"
        )
    if logs:
        lg = data["logs"]
        if not lg.get("available", True):
            c.print("no logs here (yet): the job has no result, or it is still being fetched")
            return
        c.print("[bold]stdout[/]\n" + (lg["stdout"] or "(empty)"))
        if lg["stderr"]:
            c.print("[bold]stderr[/]\n" + lg["stderr"])


@click.command("result")
@click.argument("job_id")
@click.option(
    "-o", "--output", "dest", required=True, type=click.Path(), help="Directory to create."
)
@pass_state
def result(state, job_id: str, dest: str) -> None:
    """Write a completed job's result (out/, stdout.log, stderr.log) into DIR."""
    out = state.call("v1.jobs.result", {"job_id": job_id, "dest": os.path.abspath(dest)})
    click.echo(f"{out['dest']}  ({out['output_cid']})")


@click.command("cancel")
@click.argument("job_id")
@pass_state
def cancel(state, job_id: str) -> None:
    """Cancel a job everywhere."""
    out = state.call("v1.jobs.cancel", {"job_id": job_id})
    click.echo(f"{job_id}  {out['state']}")


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
    click.echo(data.get("text") or json.dumps(data, indent=2))


def register(main: click.Group) -> None:
    for cmd in (submit, jobs, job, result, cancel, explain):
        main.add_command(cmd)
