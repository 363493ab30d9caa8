"""Start an unmodified maskd with ONE function swapped to misbehave.

    python -m tests.hostile.launch BEHAVIOUR -- <python> -m maskd.daemon ARGS...

``DevNode(prefix=[sys.executable, "-m", "tests.hostile.launch", name, "--"])``
runs this in place of the daemon: it applies ``behaviours.BEHAVIOURS[name]``
(which patches one function of the real code) and then runs the real
``maskd.daemon`` entry point with the real arguments. Everything else about
the node is what a user runs: real libp2p, real stores, real sandboxes.
"""

from __future__ import annotations

import sys

from tests.hostile.behaviours import lookup


def main(argv: list[str]) -> None:
    name, sep, *rest = argv
    assert sep == "--", "usage: launch BEHAVIOUR -- PYTHON -m maskd.daemon ARGS..."
    # drop "<python> -m maskd.daemon": this process is the daemon
    while rest and rest[0] != "maskd.daemon":
        rest.pop(0)
    args = rest[1:]
    lookup(name)()
    from maskd.daemon import main as daemon_main

    daemon_main(args=args, prog_name="maskd")


if __name__ == "__main__":
    main(sys.argv[1:])
