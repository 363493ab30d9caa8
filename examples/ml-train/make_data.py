"""Generate data/exams.csv: a synthetic, seeded dataset for the ml-train example.

Each row is a student: hours studied per week, hours slept per night, prior
score (0-100) and absences; the label says whether they passed. The label is a
noisy linear function of the features, so logistic regression can reach about
95% accuracy but not 100%. Same seed, same bytes: the CSV is committed and a
test checks that this script reproduces it.

    python3 make_data.py            # writes data/exams.csv next to this file
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

SEED = 20240601
ROWS = 1200
HEADER = "hours_studied,hours_slept,prior_score,absences,passed"


def clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def generate(seed: int = SEED, rows: int = ROWS) -> str:
    """The CSV text, header first, one student per line."""
    rng = random.Random(seed)
    lines = [HEADER]
    for _ in range(rows):
        studied = round(clamp(rng.gauss(6.0, 2.5), 0.0, 16.0), 2)
        slept = round(clamp(rng.gauss(7.0, 1.2), 3.0, 11.0), 2)
        prior = round(clamp(rng.gauss(65.0, 15.0), 0.0, 100.0), 1)
        absences = rng.randint(0, 12)
        score = (
            0.55 * (studied - 6.0)
            + 0.5 * (slept - 7.0)
            + 0.06 * (prior - 65.0)
            - 0.25 * (absences - 6.0)
            + rng.gauss(0.0, 0.4)
        )
        passed = 1 if score > 0 else 0
        lines.append(f"{studied:.2f},{slept:.2f},{prior:.1f},{absences},{passed}")
    return "\n".join(lines) + "\n"


def main() -> int:
    out = Path(__file__).resolve().parent / "data" / "exams.csv"
    out.parent.mkdir(exist_ok=True)
    out.write_text(generate(), encoding="ascii", newline="\n")
    print(f"wrote {out} ({ROWS} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
