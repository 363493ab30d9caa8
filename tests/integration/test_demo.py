"""`mask demo` as a user runs it: a 4-node devnet on one embedded chain runs a
job of every use case, and the providers are paid on chain."""

import os
import re
import struct
import subprocess
import sys

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, the chunk that must come first."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_demo_runs_every_use_case(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-c", "from maskd.cli import main; main()", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},  # one table row per line
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = run.stdout.split("jobs run from node0", 1)[1]
    for use_case in ("hello", "ml-train", "analytics", "zk-stats", "render"):
        assert use_case in summary
    assert "sum of the first 10 squares" in summary
    assert "test accuracy" in summary
    assert "640x480 PNG from 12 tiles" in summary
    # the private data-analysis job: the statistics of examples/zk-stats, proven
    assert re.search(
        r"sum 89085, 8 above \d+, mean 5567 of 16 private values; proof valid", summary
    )
    settlement = summary.split("settlement: the providers are paid on chain", 1)[1]
    assert re.search(r"16 jobs settled for [0-9.]+ MASK in [1-9] transactions", settlement)
    assert "gas per job" in settlement
    assert "disagreement" not in run.stdout
    assert "every provider was paid on chain" in run.stdout
    assert "devnet stopped" in run.stdout
    png = (out / "render.png").read_bytes()
    assert png_size(png) == (640, 480)
