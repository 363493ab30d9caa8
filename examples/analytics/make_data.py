"""Generate data/sales.csv: seeded, synthetic order lines for the analytics example.

One row per order line in 2024: date, region, product, units, unit price. The
regions and products have different weights and price levels, sales rise
towards December, and some lines carry a discount, so the aggregates are not
flat. Same seed, same bytes: the CSV is committed and a test checks that this
script reproduces it.

    python3 make_data.py            # writes data/sales.csv next to this file
"""

from __future__ import annotations

import datetime
import random
import sys
from pathlib import Path

SEED = 20240101
ROWS = 5000
HEADER = "date,region,product,units,price"

REGIONS = {"North": 0.26, "South": 0.18, "East": 0.24, "West": 0.21, "Central": 0.11}
PRODUCTS = {  # name: list price in cents
    "widget": 499,
    "gadget": 1299,
    "gizmo": 2450,
    "sprocket": 175,
    "flange": 860,
    "doohickey": 3999,
    "thingamajig": 6500,
    "whatsit": 1025,
    "contraption": 14900,
    "bracket": 320,
    "gear": 640,
    "valve": 2200,
}
DISCOUNTS = (0.0, 0.0, 0.0, 0.05, 0.10, 0.20)


def generate(seed: int = SEED, rows: int = ROWS) -> str:
    """The CSV text, header first, rows in date order."""
    rng = random.Random(seed)
    regions, region_weights = list(REGIONS), list(REGIONS.values())
    products = list(PRODUCTS)
    # cheaper products sell more often
    product_weights = [1.0 / (PRODUCTS[p] ** 0.5) for p in products]
    start = datetime.date(2024, 1, 1)
    lines = []
    for _ in range(rows):
        # a seasonal ramp: later days are up to twice as likely
        while True:
            day = rng.randrange(366)  # 2024 is a leap year
            if rng.random() < 0.5 + 0.5 * day / 365:
                break
        date = start + datetime.timedelta(days=day)
        region = rng.choices(regions, region_weights)[0]
        product = rng.choices(products, product_weights)[0]
        units = min(50, 1 + int(rng.expovariate(0.35)))
        cents = round(PRODUCTS[product] * (1.0 - rng.choice(DISCOUNTS)))
        lines.append((date.isoformat(), region, product, units, cents))
    lines.sort(key=lambda r: r[0])  # stable: same-day rows keep their order
    body = [f"{d},{r},{p},{u},{c // 100}.{c % 100:02d}" for d, r, p, u, c in lines]
    return "\n".join([HEADER, *body]) + "\n"


def main() -> int:
    out = Path(__file__).resolve().parent / "data" / "sales.csv"
    out.parent.mkdir(exist_ok=True)
    out.write_text(generate(), encoding="ascii", newline="\n")
    print(f"wrote {out} ({ROWS} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
