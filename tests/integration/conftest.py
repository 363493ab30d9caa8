"""Real maskd processes on 127.0.0.1. Every process started is stopped by pid."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from maskd.devnet import DevNode, devnet_config_path, start_devnet

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.nodes: list[DevNode] = []

    def devnet(
        self, n: int, *, env: dict[str, str] | None = None, timeout: float = 60
    ) -> list[DevNode]:
        nodes = start_devnet(n, self.root / f"net{len(self.nodes)}", env=env, timeout=timeout)
        self.nodes.extend(nodes)
        return nodes

    def node(
        self,
        name: str,
        *,
        bootstrap=(),
        extra_args=(),
        env=None,
        start=True,
        behaviour: str | None = None,
    ) -> DevNode:
        """A maskd; with ``behaviour``, one function of it swapped to misbehave
        (tests/hostile/behaviours.py)."""
        prefix: list[str] = []
        env = dict(env or {})
        if behaviour is not None:
            prefix = [sys.executable, "-m", "tests.hostile.launch", behaviour, "--"]
            env["PYTHONPATH"] = str(ROOT)
        node = DevNode(
            self.root / name,
            config=devnet_config_path(),
            bootstrap=list(bootstrap),
            extra_args=list(extra_args),
            env=env,
            prefix=prefix,
        )
        self.nodes.append(node)
        if start:
            node.start().wait_ready()
        return node

    def close(self) -> None:
        for node in self.nodes:  # all at once, then wait for each
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.stop(timeout=5)
            except Exception:
                node.kill()


@pytest.fixture
def cluster():
    # short paths: a Unix socket path must fit in 108 bytes
    root = Path(tempfile.mkdtemp(prefix="mk", dir="/tmp"))
    c = Cluster(root)
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
