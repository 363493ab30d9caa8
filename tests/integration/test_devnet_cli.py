"""`mask devnet up/status/down` as a user runs them."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from maskd.devnet import read_state


def mask(*args):
    return subprocess.run(
        [sys.executable, "-c", "from maskd.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_devnet_up_status_down(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="mkd", dir="/tmp"))
    try:
        up = mask("devnet", "up", "--nodes", "3", "--dir", str(root), "--json")
        assert up.returncode == 0, up.stderr
        nodes = json.loads(up.stdout)
        assert len(nodes) == 3 and len({n["peer_id"] for n in nodes}) == 3
        again = mask("devnet", "up", "--nodes", "3", "--dir", str(root))
        assert again.returncode == 1 and "already running" in again.stderr
        status = json.loads(mask("devnet", "status", "--dir", str(root), "--json").stdout)
        assert all(s["alive"] and s["offers"] == 3 for s in status)
        procs = read_state(root)
        down = mask("devnet", "down", "--dir", str(root))
        assert down.returncode == 0 and down.stdout.count("stopped") == 3
        assert not any(n.alive() for n in procs)  # gone (or a zombie awaiting its reaper)
        missing = mask("devnet", "down", "--dir", str(root))
        assert missing.returncode == 1 and "no devnet" in missing.stderr
    finally:
        if (root / "devnet.json").exists():
            from maskd.devnet import stop_devnet

            stop_devnet(root)
        import shutil

        shutil.rmtree(root, ignore_errors=True)
