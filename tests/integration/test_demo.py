"""`mask demo` as a user runs it: a 4-node devnet on one embedded chain runs a
job of every use case, the providers are paid on chain, and a smart contract
buys a verified result from the mesh."""

import os
import re
import struct
import subprocess
import sys

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEP = "[ │]+"  # between a label and its value in a two-column table row


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
    # a smart contract buys the same statistics from the mesh: node0's gateway places
    # the DApp's request, a provider proves it, the chain pays it and calls the DApp
    dapp = settlement.split("a DApp buys a verified result", 1)[1]
    assert re.search(rf"request{SEP}\d+ by StatsConsumer 0x[0-9a-fA-F]{{40}}", dapp)
    assert re.search(rf"state{SEP}fulfilled \([0-9.]+ s\)", dapp)
    assert re.search(rf"provider{SEP}node[1-9] \(0x[0-9a-fA-F]{{40}}\)", dapp)
    assert re.search(rf"payment{SEP}1 MASK asked, 1 MASK paid", dapp)
    assert re.search(rf"stored by the DApp{SEP}sum 89085, 8 above 5500, mean 5567", dapp)
    assert re.search(rf"gas{SEP}ask [0-9,]+, fulfill [0-9,]+", dapp)
    assert "ok: a smart contract bought a verified result from the mesh" in dapp
    assert "problem" not in dapp
    assert "every provider was paid on chain" in run.stdout
    assert "devnet stopped" in run.stdout
    png = (out / "render.png").read_bytes()
    assert png_size(png) == (640, 480)
