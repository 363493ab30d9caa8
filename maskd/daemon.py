"""``maskd``: the daemon's entry point.

Loads the config once (defaults < file < MASK_* < flags), takes the data dir's
lock, loads or creates the keys, and runs the node until SIGINT/SIGTERM, then
shuts down cleanly (offer withdrawn, socket removed) and exits 0. A bad config
exits 2 with the key, the reason and a hint; other start-up errors exit 1.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import stat
import sys
import time
from pathlib import Path

import click

from protocol.errors import ConfigError, MaskError

log = logging.getLogger("maskd")

EXIT_CONFIG = 2


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("maskd").setLevel(level.upper())
    # py-libp2p logs expected peer failures at ERROR; keep them out of the way
    # unless asked for.
    logging.getLogger("libp2p").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)


class DataDirLock:
    """An flock on <data_dir>/maskd.lock: one daemon per data dir.

    The kernel drops the lock when the process dies, so a crashed daemon never
    leaves a stale lock behind (unlike a pid file).
    """

    def __init__(self, data_dir: Path):
        self.path = data_dir / "maskd.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise MaskError(
                f"another maskd (pid {other}) is already running on data dir {self.path.parent}",
                hint="stop it first (`kill <pid>`), or start this one with another --data-dir",
                code="daemon_running",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def secure_data_dir(data: Path) -> None:
    """Make everything this process writes its owner's only, starting with the data dir.

    Sets the umask to 077 (files 0600, dirs 0700, whatever mode the code that
    creates them asks for: sqlite, exported bundles, decrypted results), creates
    the data dir 0700, and tightens an existing one that others can read. A data
    dir owned by another user is refused: its owner could read or swap our keys.
    """
    os.umask(0o077)
    try:
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise MaskError(
            f"the data dir {data} exists and is not a directory",
            hint="move the file away, or start with another --data-dir",
            code="data_dir_invalid",
        ) from None
    except OSError as exc:
        raise MaskError(
            f"cannot create the data dir {data}: {exc.strerror}",
            hint="check the permissions of its parent, or start with another --data-dir",
            code="data_dir_invalid",
        ) from None
    st = data.stat()
    if st.st_uid != os.geteuid():
        raise MaskError(
            f"the data dir {data} belongs to uid {st.st_uid}, not to this user "
            f"(uid {os.geteuid()})",
            hint="run maskd as the user who owns it, `chown` it, or start with another --data-dir",
            code="data_dir_not_ours",
        )
    old = stat.S_IMODE(st.st_mode)
    if old != 0o700:
        os.chmod(data, 0o700)
        log.warning("data dir %s was mode %04o: tightened it to 0700", data, old)


def _overrides(data_dir, listen, bootstrap, role, log_level, log_json) -> dict:
    o: dict = {}
    if data_dir:
        o.setdefault("node", {})["data_dir"] = data_dir
    if role:
        o.setdefault("node", {})["role"] = role
    if log_level:
        o.setdefault("node", {})["log_level"] = log_level
    if log_json:
        o.setdefault("node", {})["log_json"] = True
    if listen:
        o.setdefault("p2p", {})["listen"] = list(listen)
    if bootstrap:
        o.setdefault("p2p", {})["bootstrap"] = list(bootstrap)
    return o


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--data-dir", help="Keys, database, blocks and the RPC socket live here.")
@click.option(
    "--listen",
    multiple=True,
    metavar="MULTIADDR",
    help="Listen address (repeatable); port 0 picks one.",
)
@click.option(
    "--bootstrap",
    multiple=True,
    metavar="MULTIADDR",
    help="Peer to join through, with /p2p/<id> (repeatable).",
)
@click.option(
    "--role", type=click.Choice(["provider", "requester", "both"]), help="What this node does."
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-json", is_flag=True, help="Log one JSON object per line.")
@click.version_option(package_name="maskd", prog_name="maskd")
def main(config_path, data_dir, listen, bootstrap, role, log_level, log_json) -> None:
    """Run a maskd node: join the mesh, sell or buy compute."""
    from maskd.config import load_config

    try:
        cfg = load_config(
            config_path,
            overrides=_overrides(data_dir, listen, bootstrap, role, log_level, log_json),
        )
    except ConfigError as err:
        _fail(err, EXIT_CONFIG)
    setup_logging(cfg.node.log_level, cfg.node.log_json)
    try:
        code = _run(cfg)
    except MaskError as err:
        _fail(err, 1)
    except BaseExceptionGroup as group:  # a start-up MaskError raised inside trio.run
        err = next((e for e in _leaves(group) if isinstance(e, MaskError)), None)
        if err is None:
            raise
        _fail(err, 1)
    sys.exit(code)


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _fail(err: MaskError, code: int):
    click.echo(f"error: {err.message}", err=True)
    if err.hint:
        click.echo(f"hint: {err.hint}", err=True)
    sys.exit(code)


def _run(cfg) -> int:
    from maskd.identity import load_node_identity

    data = cfg.data_path
    secure_data_dir(data)  # before anything is created
    lock = DataDirLock(data)
    lock.acquire()
    try:
        identity = load_node_identity(cfg, now=int(time.time()))
        import trio

        profile_dir = os.environ.get("MASK_PROFILE")
        if profile_dir:  # developer aid: cProfile the whole run (see docs/BENCHMARKS.md)
            import cProfile

            prof = cProfile.Profile()
            try:
                return prof.runcall(trio.run, _serve, cfg, identity)
            finally:
                prof.dump_stats(os.path.join(profile_dir, f"maskd-{os.getpid()}.prof"))
        return trio.run(_serve, cfg, identity)
    finally:
        lock.release()


async def _serve(cfg, identity) -> int:
    import trio

    from maskd.node import Node

    node = Node(cfg, identity)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            log.info(
                "maskd %s up: peer %s, account %s",
                node.node_info()["version"],
                identity.peer_id,
                identity.account,
            )
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


if __name__ == "__main__":
    main()
