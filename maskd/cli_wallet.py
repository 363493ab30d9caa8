"""``mask wallet …`` and ``mask ledger …``: the node's account and its money.

Two kinds of command, because a key and a balance live in different places:

- The keystore (``show``, ``new``, ``import FILE``, ``export -o FILE``) is
  ``account.json`` in the data dir. These commands work on the file, with the
  daemon stopped (:mod:`maskd.wallet_keystore` says why, and how hostile
  keystores are handled); ``show`` asks the daemon when it runs. The data dir,
  the passphrase (``identity.passphrase_file`` or ``$MASK_PASSPHRASE``, and the
  empty-passphrase rule) and scrypt N come from the config exactly as
  ``maskd`` resolves them (``--config``, ``--data-dir``, ``MASK_*``), so a
  keystore made here is one the daemon opens.
- Balances, deposits, settlement (``balance``, ``deposit``, ``withdraw``,
  ``unlock``, ``reclaim``, ``stake``, ``mask ledger``) are RPC calls to the
  daemon; docs/ledger.md ("RPC and the CLI") fixes the shapes. Amounts go out
  as base-unit decimal strings; people type and read MASK
  (:mod:`maskd.amounts`), with the base units shown where money moves.

What the daemon sends (addresses, tx hashes, errors that quote a chain node
or a peer) is shown through ``render.safe_text``; the table builders are pure
(``now`` is passed in) and tolerate missing or odd fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from maskd import render
from maskd.amounts import (
    AmountError,
    format_eth,
    format_mask,
    format_mask_and_base,
    parse_amount,
    parse_base_units,
)
from maskd.wallet_keystore import (
    account_exists,
    account_path,
    claimed_address,
    daemon_stopped,
    decrypt_keystore,
    ensure_data_dir,
    file_exists,
    install_account,
    keystore_error,
    no_account,
    read_keystore,
    running_pid,
    write_private,
)
from protocol.errors import DaemonUnavailable, IdentityError, MaskError, RpcError

pass_state = click.pass_obj  # the group's CliState (see cli_storage for why not imported)

# Calls that send a transaction wait for it; settling waits for every batch.
TX_TIMEOUT_S = 300.0
SETTLE_TIMEOUT_S = 900.0
IMPORT_PASSPHRASE_ENV = "MASK_IMPORT_PASSPHRASE"


# Hints for the daemon's refusals that came without one (the daemon's own wins).
RPC_HINTS = {
    "insufficient_deposit": "deposit more with `mask wallet deposit AMOUNT`; "
    "`mask wallet balance` shows what is available",
    "insufficient_balance": "the wallet holds fewer tokens than that; `mask wallet balance`",
    "insufficient_stake": "`mask wallet balance` shows the stake",
    "nothing_to_withdraw": "earnings arrive when vouchers settle: `mask ledger settle`",
    "no_unlock_pending": "start one with `mask wallet unlock AMOUNT`",
    "unlock_not_due": "`mask wallet balance` shows when the unlock is due",
    "chain_unreachable": "`mask ledger` shows the chain's status; check [chain] in the config",
    "chain_off": 'this node runs without a chain (chain.backend = "off")',
}


# --- small pure helpers --------------------------------------------------------


def _safe(value: Any) -> str:
    return render.safe_text(value, max_chars=render.CELL_MAX_CHARS)


def amount_cells(value: Any) -> tuple[str, str]:
    """(``"1.5 MASK"``, ``"1500000000000000000"``) for a wire amount; odd values show as "—"."""
    try:
        base = parse_base_units(value)
    except ValueError:
        return render.DASH, render.DASH if value is None else _safe(value)
    return format_mask(base), str(base)


def mask_and_base(value: Any) -> str:
    """``"1.5 MASK (1500000000000000000 base units)"`` for a wire amount, or "—"."""
    try:
        return format_mask_and_base(parse_base_units(value))
    except ValueError:
        return render.DASH if value is None else _safe(value)


def _count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def format_when(at: Any, now: float) -> str:
    """A unix time for people: ``2025-05-01 12:00:05 (in 5m 3s)``; 0/None is "—"."""
    if not isinstance(at, int | float) or isinstance(at, bool) or at <= 0:
        return render.DASH
    try:
        clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):
        return render.DASH
    if at >= now:
        return f"{clock} (in {render.format_duration(at - now)})"
    return f"{clock} ({render.format_duration(now - at)} ago)"


def balance_table(bal: dict[str, Any], now: float) -> Table:
    """``v1.wallet.balance`` as rows of (what, MASK, base units, meaning)."""
    table = Table(title=Text(f"wallet {_safe(bal.get('address'))}"), title_justify="left")
    for col, justify in (("", "left"), ("MASK", "right"), ("base units", "right"), ("", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    try:
        eth = parse_base_units(bal.get("eth"))
        table.add_row("gas", format_eth(eth), f"{eth} wei", "ETH for transaction fees")
    except ValueError:
        table.add_row("gas", render.DASH, render.DASH, "ETH for transaction fees")
    unlock = format_when(bal.get("unlock_at"), now)
    rows = (
        ("wallet", "mask", "tokens in the account, not deposited"),
        ("deposit", "deposit", "in escrow: pays providers"),
        ("locked", "locked", f"being taken back; `mask wallet reclaim` after {unlock}"),
        ("available", "available", "deposit − locked: what providers see"),
        ("stake", "stake", "provider stake"),
        ("earnings", "earnings", "settled: `mask wallet withdraw` pays them out"),
        ("owed to me", "owed_to_me", "delivered jobs and vouchers not yet settled"),
        ("owed by me", "owed_by_me", "this node's vouchers not yet settled"),
    )
    for label, key, meaning in rows:
        if key == "locked" and bal.get("unlock_at") in (None, 0):
            meaning = "being taken back (none now)"
        table.add_row(label, *(render.untrusted(c) for c in amount_cells(bal.get(key))), meaning)
    return table


def status_line(status: Any, now: float) -> Text:
    """The chain's status: ``chain unreachable: …: retrying in 8 s (attempt 4)``."""
    if not isinstance(status, dict):
        return Text(render.DASH)
    state = status.get("state")
    if state == "ok":
        return Text("ok", style="green")
    if state == "off":
        return Text('off: no chain (chain.backend = "off"), nothing settles', style="yellow")
    if state != "retrying":
        return render.untrusted(state if state is not None else render.DASH)
    line = "chain unreachable"
    since = status.get("since")
    if isinstance(since, int | float) and not isinstance(since, bool) and since > 0:
        line += f" since {format_when(since, now)}"
    if status.get("last_error"):
        line += ": " + render.safe_text(status["last_error"], max_chars=render.CELL_MAX_CHARS)
    retry = status.get("next_retry_at")
    if isinstance(retry, int | float) and not isinstance(retry, bool):
        line += f": retrying in {render.format_duration(max(retry - now, 0))}"
        attempts = status.get("attempts")
        if isinstance(attempts, int) and not isinstance(attempts, bool):
            line += f" (attempt {attempts})"
    return Text(line, style="red")


def batches_table(batches: Any) -> Table:
    """Settlement batches: the transaction, its vouchers, gas, status and block."""
    rows = [b for b in batches if isinstance(b, dict)] if isinstance(batches, list) else []
    table = Table(title=_count(len(rows), "batch", "batches"), title_justify="left")
    for col in ("batch", "tx hash", "vouchers", "gas used", "status", "block"):
        table.add_column(col)
    for b in rows:
        cells = [b.get(k) for k in ("id", "tx_hash", "vouchers", "gas_used", "status", "block")]
        if isinstance(cells[2], list):  # the vouchers themselves: show how many
            cells[2] = len(cells[2])
        table.add_row(*(render.untrusted(c if c is not None else render.DASH) for c in cells))
    return table


def ledger_view(data: dict[str, Any], now: float) -> Group:
    """``v1.ledger.show`` for people: chain, contracts, status, channels, batches, missing."""
    chain = data.get("chain") if isinstance(data.get("chain"), dict) else {}
    contracts = data.get("contracts") if isinstance(data.get("contracts"), dict) else {}
    backend, url = chain.get("backend"), chain.get("rpc_url")
    where = f"{backend} {url}" if url and url not in ("embedded", backend) else backend
    confirmations = chain.get("confirmations")
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", justify="right")
    head.add_column()
    head.add_row(
        "chain",
        render.untrusted(
            f"{where or render.DASH}, chain id {chain.get('chain_id', render.DASH)}, "
            f"{confirmations if confirmations is not None else render.DASH} "
            + ("confirmation" if confirmations == 1 else "confirmations")
        ),
    )
    head.add_row("token", render.untrusted(contracts.get("token") or render.DASH))
    head.add_row("escrow", render.untrusted(contracts.get("escrow") or render.DASH))
    head.add_row("status", status_line(data.get("status"), now))
    pending = data.get("pending_vouchers", render.DASH)
    if isinstance(pending, list):  # the vouchers waiting for a batch: how many
        pending = len(pending)
    head.add_row("pending vouchers", render.untrusted(pending))

    channels = data.get("channels") if isinstance(data.get("channels"), list) else []
    channels = [c for c in channels if isinstance(c, dict)]
    ch = Table(title=_count(len(channels), "channel"), title_justify="left")
    for col in ("dir", "requester", "provider", "cumulative", "settled", "unsettled"):
        ch.add_column(col, justify="right" if col in ("cumulative", "settled") else "left")
    ch.add_column("unsettled (base units)", justify="right")
    for c in channels:
        cumulative, settled = c.get("cumulative"), c.get("settled")
        try:
            owed = max(parse_base_units(cumulative) - parse_base_units(settled), 0)
            unsettled, unsettled_base = format_mask(owed), str(owed)
        except ValueError:
            unsettled = unsettled_base = render.DASH
        ch.add_row(
            *(
                render.untrusted(c.get(k) or render.DASH)
                for k in ("direction", "requester", "provider")
            ),
            render.untrusted(amount_cells(cumulative)[0]),
            render.untrusted(amount_cells(settled)[0]),
            Text(unsettled),
            Text(unsettled_base),
        )
    missing = data.get("missing") if isinstance(data.get("missing"), list) else []
    missing = [m for m in missing if isinstance(m, dict)]
    miss = Table(title="voucher missing: " + _count(len(missing), "job"), title_justify="left")
    for col in ("job", "requester", "price", "due"):
        miss.add_column(col)
    for m in missing:
        miss.add_row(
            render.untrusted(m.get("job_id") or render.DASH),
            render.untrusted(m.get("requester") or render.DASH),
            render.untrusted(mask_and_base(m.get("price"))),
            format_when(m.get("due_at"), now),
        )
    parts = [head, ch, batches_table(data.get("batches")), miss]
    claims = data.get("claims") if isinstance(data.get("claims"), list) else []
    claims = [c for c in claims if isinstance(c, dict)]
    if claims:  # zk jobs claimed on chain with this provider's proof
        table = Table(title="claims on chain: " + _count(len(claims), "job"), title_justify="left")
        for col in ("job", "requester", "price", "status", "tx hash", "reason"):
            table.add_column(col)
        for c in claims:
            table.add_row(
                render.untrusted(c.get("job_id") or render.DASH),
                render.untrusted(c.get("requester") or render.DASH),
                render.untrusted(mask_and_base(c.get("price"))),
                render.untrusted(c.get("status") or render.DASH),
                render.untrusted(c.get("tx_hash") or render.DASH),
                render.untrusted(c.get("reason") or render.DASH),
            )
        parts.append(table)
    seen = data.get("claims_seen") if isinstance(data.get("claims_seen"), list) else []
    seen = [c for c in seen if isinstance(c, dict)]
    if seen:  # our jobs, paid on chain by the provider's proof
        table = Table(
            title="paid on chain by the provider's proof: " + _count(len(seen), "job"),
            title_justify="left",
        )
        for col in ("job", "provider", "amount", "tx hash"):
            table.add_column(col)
        for c in seen:
            table.add_row(
                render.untrusted(c.get("job_id") or render.DASH),
                render.untrusted(c.get("provider") or render.DASH),
                render.untrusted(mask_and_base(c.get("amount"))),
                render.untrusted(c.get("tx_hash") or render.DASH),
            )
        parts.append(table)
    return Group(*parts)


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _import_passphrase(file: Path, passphrase_file: str | None) -> str:
    from maskd.identity import read_passphrase

    if passphrase_file:
        return read_passphrase(passphrase_file, env={})
    if IMPORT_PASSPHRASE_ENV in os.environ:
        return os.environ[IMPORT_PASSPHRASE_ENV]
    if not _stdin_is_terminal():
        raise IdentityError(
            f"no passphrase for {file}",
            hint=f"pass --file-passphrase-file F (first line) or set {IMPORT_PASSPHRASE_ENV}",
            code="passphrase_required",
        )
    return click.prompt(f"passphrase of {file}", hide_input=True, default="", show_default=False)


def _config(config_path: str | None, data_dir: str | None) -> Any:
    """The config as ``maskd`` resolves it (file < MASK_* < flags)."""
    from maskd.config import load_config

    overrides = {"node": {"data_dir": data_dir}} if data_dir else None
    return load_config(config_path, overrides=overrides)


def keystore_options(func: Any) -> Any:
    """``--config`` and ``--data-dir``, the same as ``maskd``'s."""
    func = click.option("--data-dir", help="The node's data dir (as for maskd).")(func)
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file."
    )(func)


# --- commands --------------------------------------------------------------------


def _console() -> Console:
    return Console(highlight=False, width=None if os.isatty(1) else 160)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _amount(text: str, *, positive: bool = True) -> int:
    try:
        base = parse_amount(text)
    except AmountError as exc:
        raise MaskError(exc.message, hint=exc.hint, code="invalid_amount") from None
    if positive and base == 0:
        raise MaskError(
            "the amount is 0", hint="give more than 0, e.g. 1.5 (MASK)", code="invalid_amount"
        )
    return base


def _call(state: Any, method: str, params: dict | None = None, timeout: float = 10.0) -> Any:
    """One RPC call; a refusal without a hint gets the CLI's (RPC_HINTS)."""
    try:
        with state.connect() as client:
            return client.call(method, params, timeout=timeout)
    except RpcError as exc:
        if not exc.hint and exc.code in RPC_HINTS:
            exc.hint = RPC_HINTS[exc.code]
        raise


@click.group("wallet")
def wallet() -> None:
    """The node's account: keys (stopped daemon) and money (running daemon)."""


@wallet.command("show")
@keystore_options
@click.option("--json", "as_json", is_flag=True, help='Print {"address"}.')
@pass_state
def wallet_show(state: Any, config_path: str | None, data_dir: str | None, as_json: bool) -> None:
    """The account's address: from the daemon when it runs, else from account.json."""
    cfg = _config(config_path, data_dir)
    path = account_path(cfg)
    address: str | None = None
    source = ""
    if running_pid(cfg.data_path) is not None:
        socket = state.socket or os.fspath(cfg.socket_path)
        try:
            answer = _call(dataclasses.replace(state, socket=socket), "v1.wallet.show")
            if isinstance(answer, dict) and answer.get("address"):
                address, source = _safe(answer["address"]), "the running maskd"
        except DaemonUnavailable:
            pass  # stopping or starting: the file still says
        except RpcError as exc:
            if exc.code != "method_not_found":
                raise
    if address is None:
        if not path.exists():
            raise no_account(path)
        address, source = claimed_address(read_keystore(path)), os.fspath(path)
        if address is None:
            raise keystore_error(path, "it has no address field; start maskd to read it")
    if as_json:
        _json({"address": address})
        return
    click.echo(address)
    click.echo(f"(from {source})", err=True)


@wallet.command("new")
@keystore_options
@click.option("--force", is_flag=True, help="Replace an existing account (kept as a backup).")
@click.option("--json", "as_json", is_flag=True)
def wallet_new(config_path: str | None, data_dir: str | None, force: bool, as_json: bool) -> None:
    """Make a new account keystore in the data dir (daemon stopped)."""
    from eth_account import Account

    from maskd.identity import encrypt_account_key, node_passphrase

    cfg = _config(config_path, data_dir)
    passphrase = node_passphrase(cfg)
    path = account_path(cfg)
    ensure_data_dir(cfg.data_path)
    with daemon_stopped(cfg.data_path, "`mask wallet new`"):
        if path.exists() and not force:
            raise account_exists(path)
        key = secrets.token_bytes(32)
        address = Account.from_key(key).address
        data = encrypt_account_key(key, passphrase, cfg.identity.scrypt_n)
        backup = install_account(path, data, force=force, now=time.time())
    _report_install(address, path, backup, as_json)


def _report_install(address: str, path: Path, backup: Path | None, as_json: bool) -> None:
    if as_json:
        _json(
            {
                "address": address,
                "keystore": os.fspath(path),
                "replaced": backup and os.fspath(backup),
            }
        )
        return
    click.echo(address)
    click.echo(f"keystore {path} (scrypt, the node's passphrase)", err=True)
    if backup:
        click.echo(f"the old keystore is kept as {backup}", err=True)


@wallet.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@keystore_options
@click.option(
    "--file-passphrase-file",
    metavar="F",
    help=f"FILE's own passphrase: F's first line (else ${IMPORT_PASSPHRASE_ENV}, else a prompt).",
)
@click.option("--force", is_flag=True, help="Replace an existing account (kept as a backup).")
@click.option("--json", "as_json", is_flag=True)
def wallet_import(
    file: Path,
    config_path: str | None,
    data_dir: str | None,
    file_passphrase_file: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Import a keystore v3 FILE (geth, MetaMask, eth_account) as the node's account."""
    from maskd.identity import check_keystore_kdf, encrypt_account_key, node_passphrase

    cfg = _config(config_path, data_dir)
    keyfile = read_keystore(file)
    check_keystore_kdf(file, keyfile["crypto"])  # refuse an absurd KDF before anything else
    passphrase = node_passphrase(cfg)
    path = account_path(cfg)
    ensure_data_dir(cfg.data_path)
    with daemon_stopped(cfg.data_path, "`mask wallet import`"):
        if path.exists() and not force:
            raise account_exists(path)
        key, address, _weak = decrypt_keystore(
            file,
            keyfile,
            _import_passphrase(file, file_passphrase_file),
            wrong_hint=f"give the passphrase {file.name} was made with (not the node's): "
            f"--file-passphrase-file F or ${IMPORT_PASSPHRASE_ENV}",
        )
        data = encrypt_account_key(key, passphrase, cfg.identity.scrypt_n)
        backup = install_account(path, data, force=force, now=time.time())
    _report_install(address, path, backup, as_json)


@wallet.command("export")
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@keystore_options
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def wallet_export(output: Path, config_path: str | None, data_dir: str | None, force: bool) -> None:
    """Write the account's keystore v3 (the node's passphrase) to FILE, mode 0600."""
    from maskd.identity import encrypt_account_key, node_passphrase

    cfg = _config(config_path, data_dir)
    path = account_path(cfg)
    if not path.exists():
        raise no_account(path)
    if output.exists() and not force:
        raise file_exists(output)
    passphrase = node_passphrase(cfg)
    keyfile = read_keystore(path)
    key, address, weak = decrypt_keystore(
        path,
        keyfile,
        passphrase,
        wrong_hint="set MASK_PASSPHRASE or identity.passphrase_file to the node's passphrase",
    )
    # What maskd would write: the file as it is, or re-encrypted if below the floor.
    data = (
        encrypt_account_key(key, passphrase, cfg.identity.scrypt_n) if weak else path.read_bytes()
    )
    write_private(output, data, replace=force)
    click.echo(f"exported {address} to {output} (keystore v3, the node's passphrase)")


@wallet.command("balance")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def wallet_balance(state: Any, as_json: bool) -> None:
    """Tokens, escrow deposit, stake, earnings and what is owed (asks the daemon)."""
    bal = _call(state, "v1.wallet.balance")
    if as_json:
        _json(bal)
    else:
        _console().print(balance_table(bal if isinstance(bal, dict) else {}, time.time()))


def _tx(state: Any, method: str, params: dict | None, as_json: bool, lines: Any) -> None:
    out = _call(state, method, params, timeout=TX_TIMEOUT_S)
    if as_json:
        _json(out)
        return
    out = out if isinstance(out, dict) else {}
    for line in lines(out):
        click.echo(line)
    click.echo(f"tx {_safe(out.get('tx_hash') or render.DASH)}")


@wallet.command("deposit")
@click.argument("amount")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def wallet_deposit(state: Any, amount: str, as_json: bool) -> None:
    """Move AMOUNT (1.5 = 1.5 MASK; 1500base) from the wallet into escrow."""
    base = _amount(amount)
    _tx(
        state,
        "v1.wallet.deposit",
        {"amount": str(base)},
        as_json,
        lambda o: [
            f"deposited {format_mask_and_base(base)}",
            f"deposit now {mask_and_base(o.get('deposit'))}",
        ],
    )


@wallet.command("withdraw")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def wallet_withdraw(state: Any, as_json: bool) -> None:
    """Pay this node's settled earnings out to its wallet."""
    _tx(
        state,
        "v1.wallet.withdraw",
        None,
        as_json,
        lambda o: [f"withdrew {mask_and_base(o.get('amount'))}"],
    )


@wallet.command("unlock")
@click.argument("amount")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def wallet_unlock(state: Any, amount: str, as_json: bool) -> None:
    """Start taking AMOUNT of the deposit back (reclaim it after the unlock delay)."""
    base = _amount(amount)
    _tx(
        state,
        "v1.wallet.unlock",
        {"amount": str(base)},
        as_json,
        lambda o: [
            f"unlocking {mask_and_base(o.get('amount'))}",
            f"`mask wallet reclaim` after {format_when(o.get('unlock_at'), time.time())}",
        ],
    )


@wallet.command("reclaim")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def wallet_reclaim(state: Any, as_json: bool) -> None:
    """Take back the unlocked part of the deposit, once the unlock is due."""
    _tx(
        state,
        "v1.wallet.reclaim",
        None,
        as_json,
        lambda o: [f"reclaimed {mask_and_base(o.get('amount'))}"],
    )


@wallet.command("stake")
@click.argument("amount")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def wallet_stake(state: Any, amount: str, as_json: bool) -> None:
    """Stake AMOUNT as a provider."""
    base = _amount(amount)
    _tx(
        state,
        "v1.wallet.stake",
        {"amount": str(base)},
        as_json,
        lambda o: [
            f"staked {format_mask_and_base(base)}",
            f"stake now {mask_and_base(o.get('stake'))}",
        ],
    )


@click.group("ledger", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ledger(ctx: click.Context, as_json: bool) -> None:
    """Chain, contracts, channels, batches, pending and missing vouchers."""
    if ctx.invoked_subcommand is not None:
        return
    data = _call(ctx.obj, "v1.ledger.show")
    if as_json:
        _json(data)
    else:
        _console().print(ledger_view(data if isinstance(data, dict) else {}, time.time()))


@ledger.command("settle")
@click.option("--no-wait", is_flag=True, help="Return once the batches are sent.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def ledger_settle(state: Any, no_wait: bool, as_json: bool) -> None:
    """Settle every pending voucher now and print the batches."""
    out = _call(
        state,
        "v1.ledger.settle",
        {"wait": not no_wait},
        timeout=60.0 if no_wait else SETTLE_TIMEOUT_S,
    )
    if as_json:
        _json(out)
        return
    batches = out.get("batches") if isinstance(out, dict) else None
    if not batches:
        click.echo("nothing to settle: no pending vouchers")
        return
    _console().print(batches_table(batches))


def register(main: click.Group) -> None:
    main.add_command(wallet)
    main.add_command(ledger)
