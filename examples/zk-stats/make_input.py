"""Write input.json for the zk-stats example: 16 private values, their commitment.

The private_stats circuit proves facts about a dataset committed by its
Poseidon hash, so the commitment is computed here, before the job is placed,
with the same Poseidon the circuit uses (zkp.poseidon). Run it from anywhere:

    .venv/bin/python examples/zk-stats/make_input.py [--values 1,2,...] [--threshold N]

It prints what the proof will reveal (sum, count above the threshold, floor of
the mean), so you can compare it with `mask job ID` once the job is done.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository, for zkp

from zkp.poseidon import poseidon  # noqa: E402

#: Monthly salaries of a 16-person team (private: only the statistics leave).
VALUES = [
    4210, 5120, 3980, 6450, 7020, 4890, 5560, 6100,
    3720, 8150, 4475, 5930, 6780, 4060, 5340, 7300,
]  # fmt: skip
THRESHOLD = 5500
N = 16
MAX_VALUE = 2**32  # the circuit range-checks every value below this


def make_input(values: list[int], threshold: int) -> dict:
    if len(values) != N:
        raise SystemExit(f"private_stats takes exactly {N} values, got {len(values)}")
    if not all(0 <= v < MAX_VALUE for v in values) or not 0 <= threshold < MAX_VALUE:
        raise SystemExit(f"values and threshold must be in [0, {MAX_VALUE})")
    return {
        "values": [str(v) for v in values],
        "threshold": str(threshold),
        "commitment": str(poseidon(values)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", help="16 comma-separated integers")
    parser.add_argument("--threshold", type=int, default=THRESHOLD)
    parser.add_argument("-o", "--output", type=Path, default=HERE / "input.json")
    args = parser.parse_args()
    values = [int(v) for v in args.values.split(",")] if args.values else VALUES
    doc = make_input(values, args.threshold)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    total = sum(values)
    above = sum(v > args.threshold for v in values)
    print(f"wrote {args.output}")
    print(f"commitment {doc['commitment']}")
    print(f"the proof reveals: sum={total} count_above={above} mean_floor={total // N}")


if __name__ == "__main__":
    main()
