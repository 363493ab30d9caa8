"""``mask top``: the Textual TUI (its own asyncio process; see ``app``)."""

from __future__ import annotations

import os

from maskd.tui.app import TopApp
from maskd.tui.client import AsyncioRpcClient, ClientFactory, TopClient, socket_client_factory

__all__ = [
    "TopApp",
    "TopClient",
    "ClientFactory",
    "AsyncioRpcClient",
    "socket_client_factory",
    "run_top",
]


def run_top(socket_path: str | os.PathLike[str]) -> None:
    """Run the TUI against the daemon at ``socket_path`` until the user quits."""
    TopApp(socket_client_factory(socket_path), socket_label=socket_path).run()
