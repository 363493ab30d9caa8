"""``mask devnet up|down|status`` and ``mask demo``."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from maskd.devnet import (
    DevnetError,
    make_private_dir,
    read_chain,
    read_state,
    start_devnet,
    stop_devnet,
    wait_full_view,
    write_state,
)
from maskd.devnet_chain import CHAIN_KINDS, DevChain


def _console() -> Console:
    # piped (make demo > log): wide enough that the summary rows do not wrap
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(stderr=False, highlight=False, width=wide)


@click.group("devnet")
def devnet() -> None:
    """A local mesh of maskd processes on 127.0.0.1."""


@devnet.command("up")
@click.option("--nodes", "-n", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--dir", "root", default=".devnet", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--chain",
    type=click.Choice(CHAIN_KINDS),
    default="embedded",
    show_default=True,
    help="The chain the nodes settle on: one embedded EVM (ledger.devchain), "
    "anvil (installed into .anvil/ if missing), or off (no payments).",
)
@click.option(
    "--timeout", default=90.0, show_default=True, help="Seconds to wait for the mesh to form."
)
@click.option("--json", "as_json", is_flag=True, help="Print the nodes and the chain as JSON.")
def devnet_up(nodes: int, root: str, chain: str, timeout: float, as_json: bool) -> None:
    """Start a chain and N nodes on it, each bootstrapped to the first; wait
    until they see each other, then fund every node and have it deposit."""
    path = Path(root).resolve()
    if (path / "devnet.json").exists():
        running = [n for n in read_state(path) if n.alive()]
        old_chain = _read_chain_quietly(path)
        if running or (old_chain is not None and old_chain.alive()):
            raise DevnetError(
                f"a devnet is already running in {path} ({len(running)} nodes"
                + (", its chain" if old_chain is not None and old_chain.alive() else "")
                + ")",
                hint=f"stop it with `mask devnet down --dir {root}`",
            )
    make_private_dir(path)  # 0700: the nodes' keys live under it
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    started = time.monotonic()
    procs = start_devnet(
        nodes, path, chain=chain, timeout=timeout, progress=lambda m: err.print(f"[dim]{m}[/]")
    )
    write_state(path, procs)
    if as_json:
        click.echo(json.dumps(_devnet_json(procs, procs.chain), indent=2))
        return
    table = Table(title=f"devnet: {nodes} nodes up in {time.monotonic() - started:.1f} s")
    for col in ("node", "pid", "peer id", "socket"):
        table.add_column(col)
    for n in procs:
        table.add_row(n.data_dir.name, str(n.pid), n.peer_id, str(n.socket))
    console = _console()
    console.print(table)
    if procs.chain is not None:
        console.print(_chain_line(procs.chain))
        if procs.chain.requests:
            console.print(
                f"gateway: {procs[0].data_dir.name} answers DApps' requests "
                f"(mask --socket {procs[0].socket} gateway)"
            )
    click.echo(f"use a node: mask --socket {procs[0].socket} status")


def _read_chain_quietly(path: Path) -> DevChain | None:
    try:
        return read_chain(path)
    except DevnetError:
        return None


def _chain_line(chain: DevChain, alive: bool | None = None) -> str:
    state = "" if alive is None else (", running" if alive else ", [red]not running[/]")
    requests = f", requests {chain.requests}" if chain.requests else ""
    return (
        f"chain: {chain.kind} at {chain.url} (chain id {chain.chain_id}, pid {chain.pid}{state}); "
        f"token {chain.token}, escrow {chain.escrow}{requests}; log {chain.log}"
    )


def _devnet_json(nodes, chain: DevChain | None) -> dict:
    return {
        "nodes": [_node_json(n) for n in nodes],
        "chain": chain.to_json() if chain is not None else None,
    }


def _node_json(n) -> dict:
    return {
        "name": n.data_dir.name,
        "pid": n.pid,
        "peer_id": n.peer_id,
        "addrs": n.addrs,
        "socket": str(n.socket),
    }


@devnet.command("down")
@click.option(
    "--dir", "root", default=".devnet", show_default=True, type=click.Path(file_okay=False)
)
def devnet_down(root: str) -> None:
    """Stop every node of the devnet in DIR, then its chain, by pid."""
    stopped = stop_devnet(Path(root).resolve())
    for node, was in stopped.nodes:
        click.echo(
            f"{node.data_dir.name}: {'stopped' if was else 'was not running'} (pid {node.pid})"
        )
    if stopped.chain is not None:
        state = "stopped" if stopped.chain_was_running else "was not running"
        click.echo(f"chain ({stopped.chain.kind}): {state} (pid {stopped.chain.pid})")


@devnet.command("status")
@click.option(
    "--dir", "root", default=".devnet", show_default=True, type=click.Path(file_okay=False)
)
@click.option("--json", "as_json", is_flag=True)
def devnet_status(root: str, as_json: bool) -> None:
    """Each node: alive, peers, offers seen, on the chain; and the chain."""
    path = Path(root).resolve()
    rows = []
    for node in read_state(path):
        row = _node_json(node) | {
            "alive": node.alive(),
            "peers": None,
            "offers": None,
            "chain_connected": None,
            "gateway": None,
        }
        if row["alive"]:
            try:
                info = node.call("v1.node.info", timeout=5)
                row["peers"], row["offers"] = info["peers"], info["offers"]
                chain_info = info.get("chain") or {}
                if chain_info.get("backend") != "off":
                    row["chain_connected"] = bool(chain_info.get("connected"))
                    gateway = node.call("v1.gateway.show", {"limit": 1}, timeout=5)
                    if gateway.get("enabled"):
                        row["gateway"] = str(gateway.get("state"))
            except Exception as exc:
                row["error"] = str(exc)
        rows.append(row)
    chain = read_chain(path)
    chain_alive = chain.alive() if chain is not None else None
    if as_json:
        chain_row = chain.to_json() | {"alive": chain_alive} if chain is not None else None
        click.echo(json.dumps({"nodes": rows, "chain": chain_row}, indent=2))
        return
    table = Table()
    for col in ("node", "pid", "alive", "peers", "offers seen", "on chain", "gateway", "peer id"):
        table.add_column(col)
    for r in rows:
        connected = r["chain_connected"]
        table.add_row(
            r["name"],
            str(r["pid"]),
            "yes" if r["alive"] else "no",
            str(r["peers"]),
            str(r["offers"]),
            "-" if connected is None else ("yes" if connected else "[red]no[/]"),
            r["gateway"] or "-",
            r["peer_id"],
        )
    console = _console()
    console.print(table)
    console.print(_chain_line(chain, chain_alive) if chain is not None else "chain: off")


@click.command("demo")
@click.option("--nodes", "-n", default=4, show_default=True, type=click.IntRange(2, 16))
@click.option(
    "--keep", is_flag=True, help="Leave the devnet running (stop it with `mask devnet down`)."
)
@click.option(
    "--out",
    "out",
    default=".demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the job results and render.png go (kept after the devnet stops).",
)
@click.option(
    "--job-timeout",
    default=90.0,
    show_default=True,
    help="Seconds the jobs may take, all together, before the demo gives up on them.",
)
def demo(nodes: int, keep: bool, out: str, job_timeout: float) -> None:
    """Bring up a local mesh on one embedded chain, show the offer book, run a job
    of every use case, settle the providers' pay on chain, take it all down."""
    from maskd.demo import format_mask, run_demo_jobs
    from maskd.demo_settlement import settle_devnet

    console = _console()
    out_dir = Path(out).resolve()
    rows = []
    settlement = None
    dapp_failures: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="mask-demo-", dir="/tmp"))
    console.rule(f"[bold]maskd demo: a {nodes}-node mesh on 127.0.0.1 and one embedded chain")
    started = time.monotonic()
    procs = start_devnet(
        nodes, root, chain="embedded", progress=lambda m: console.print(f"  [dim]{m}[/]")
    )
    write_state(root, procs)
    try:
        wait_full_view(procs, 30)
        elapsed = time.monotonic() - started
        table = Table(title=f"every node sees every offer ({elapsed:.1f} s from start)")
        for col in ("node", "peer id", "peers", "offers seen", "cpu offered in the mesh", "drops"):
            table.add_column(col)
        all_ok = True
        for n in procs:
            info = n.call("v1.node.info")
            offers = n.call("v1.offers.list")
            all_ok &= len(offers) == nodes
            table.add_row(
                n.data_dir.name,
                n.peer_id[:8] + "…" + n.peer_id[-6:],
                str(info["peers"]),
                f"{len(offers)}/{nodes}",
                str(sum(o["cpu"] for o in offers)),
                str(sum(info["drops"].values())),
            )
        console.print(table)
        offers = procs[-1].call("v1.offers.list")
        detail = Table(title=f"the offer book as {procs[-1].data_dir.name} sees it")
        for col in (
            "provider",
            "account",
            "cpu",
            "memory",
            "disk",
            "executors",
            "price / core-hour",
            "expires in",
        ):
            detail.add_column(col)
        now = time.time()
        for o in offers:
            detail.add_row(
                o["peer_id"][-8:],
                o["account"][:10] + "…",
                str(o["cpu"]),
                f"{o['memory_mb']} MB",
                f"{o['disk_mb']} MB",
                ",".join(o["executors"]),
                o["prices"]["cpu_core_hour"],
                f"{o['expires_at'] - now:.0f} s",
            )
        console.print(detail)
        if not all_ok:
            raise DevnetError("not every node saw every offer")
        console.print("[green]ok[/]: the mesh formed and every offer reached every node")
        console.rule(f"[bold]jobs: {procs[0].data_dir.name} requests, the mesh provides")
        jobs_started = time.monotonic()
        rows = run_demo_jobs(
            procs[0], out_dir, lambda m: console.print(f"  [dim]{m}[/]"), timeout=job_timeout
        )
        console.print(_summary_table(rows, time.monotonic() - jobs_started))
        console.rule("[bold]settlement: the providers are paid on chain")
        assert procs.chain is not None
        settlement = settle_devnet(
            procs,
            procs[0],
            procs.chain,
            lambda m: console.print(f"  [dim]{m}[/]"),
            format_amount=format_mask,
        )
        console.print(_settlement_table(settlement))
        console.print(_settlement_line(settlement), soft_wrap=True)
        for line in settlement.disagreements:
            console.print(f"[red]disagreement[/]: {line}")
        console.rule("[bold]a DApp buys a verified result: a contract asks, the mesh proves")
        dapp_failures = _dapp_section(console, procs)
    finally:
        if keep:
            console.print(
                f"left running: mask devnet status --dir {root}; stop: mask devnet down --dir {root}"
            )
        else:
            stop_devnet(root)
            shutil.rmtree(root, ignore_errors=True)
            console.print("devnet stopped")
    console.print(f"results kept in {out_dir} (render.png, results/<job>/)")
    failed = [r.job for r in rows if not r.ok]
    if failed:
        raise DevnetError(f"{len(failed)} of {len(rows)} demo jobs failed: {', '.join(failed)}")
    if settlement is not None and not settlement.ok:
        raise DevnetError(
            f"the settlement does not add up ({len(settlement.disagreements)} disagreements)",
            hint="see the lines marked disagreement above, and each provider's `mask ledger`",
        )
    if dapp_failures:
        raise DevnetError(
            "the DApp's request was not answered as it should be: " + "; ".join(dapp_failures),
            hint="see node0's maskd.err and `mask gateway` (run the demo with --keep)",
        )
    console.print(
        "[green]ok[/]: every use case ran on the mesh, every provider was paid on chain and a "
        f"smart contract bought a verified result ({time.monotonic() - started:.1f} s)"
    )


def _dapp_section(console: Console, procs) -> list[str]:
    """The demo's DApp request (maskd.demo_dapp); what went wrong, in words."""
    from maskd.demo import examples_dir, format_mask
    from maskd.demo_dapp import buy_verified_result, dapp_rows

    assert procs.chain is not None
    try:
        result = buy_verified_result(
            procs[0],
            procs,
            procs.chain,
            examples_dir() / "zk-stats",
            lambda m: console.print(f"  [dim]{m}[/]"),
            format_amount=format_mask,
        )
    except DevnetError as e:
        console.print(f"[red]failed[/]: {e.message}" + (f" ({e.hint})" if e.hint else ""))
        return [e.message]
    table = Table(title="a smart contract's request, answered on chain", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for what, value in dapp_rows(result, format_mask):
        table.add_row(what, value)
    console.print(table)
    for line in result.problems:
        console.print(f"[red]problem[/]: {line}")
    if result.ok:
        console.print("[green]ok[/]: a smart contract bought a verified result from the mesh")
    return list(result.problems)


def _summary_table(rows, elapsed: float) -> Table:
    from maskd.demo import format_mask

    table = Table(title=f"jobs run from node0 ({elapsed:.1f} s, submit to last result)")
    for col in ("job", "use case", "provider", "time (s)", "cost (MASK)"):
        table.add_column(col, justify="right" if col.startswith(("time", "cost")) else "left")
    table.add_column("output", ratio=1, overflow="fold")
    for r in rows:
        table.add_row(
            r.job if r.ok else f"[red]{r.job}[/]",
            r.use_case,
            r.provider,
            f"{r.seconds:.1f}" if r.seconds is not None else "-",
            format_mask(r.cost),
            r.output if r.ok else f"[red]{r.output}[/]",
        )
    return table


def _settlement_table(s) -> Table:
    """Who earned what: per provider, owed / earned / on chain, and the gas."""
    from maskd.demo import format_mask

    table = Table(title=f"who earned what (settled in {s.seconds:.1f} s)")
    for col in ("provider", "account", "jobs", "owed (MASK)", "earned (MASK)", "on chain (MASK)"):
        table.add_column(col, justify="left" if col in ("provider", "account") else "right")
    table.add_column("transactions", justify="right")
    table.add_column("gas used", justify="right")
    for p in s.providers:
        agrees = p.on_chain == p.owed and p.earned == p.on_chain
        chain_cell = format_mask(p.on_chain) if agrees else f"[red]{format_mask(p.on_chain)}[/]"
        table.add_row(
            p.node,
            p.account[:10] + "…",
            str(p.jobs),
            format_mask(p.owed),
            format_mask(p.earned),
            chain_cell,
            str(p.transactions),
            f"{p.gas_used:,}",
        )
    return table


def _settlement_line(s) -> str:
    """The settlement in one line: jobs, MASK, transactions, gas per job."""
    from maskd.demo import format_mask
    from maskd.demo_settlement import ERC20_TRANSFER_GAS

    line = f"{s.jobs} jobs settled for {format_mask(s.paid)} MASK in {s.transactions} transactions"
    if s.gas_per_job is not None:
        line += (
            f": {s.gas_per_job:,.0f} gas per job "
            f"(an ERC-20 transfer per job would cost {ERC20_TRANSFER_GAS:,})"
        )
    return line
