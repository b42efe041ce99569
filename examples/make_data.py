"""Write the example tables hpo's own-data examples use: a classification and a regression.

    python examples/make_data.py        # writes examples/*.csv (they are committed too)

churn.csv: customers of a made-up phone company, and whether they left ("yes"/"no"): a binary
task with a text column (plan) to one-hot encode and an id column to drop.
houses.csv / houses_test.csv: made-up house prices in k$ from size, rooms, age and city: a
regression with a separate test file, like Boston housing but with a categorical column.
*_new.csv: rows without the target, to try `hpo predict` on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def churn(n: int, rng: np.random.Generator) -> pd.DataFrame:
    plan = rng.choice(["basic", "family", "premium"], size=n, p=[0.5, 0.3, 0.2])
    tenure = rng.integers(1, 72, size=n)
    monthly = np.round(rng.normal(40, 12, size=n) + (plan == "premium") * 30, 2)
    calls = rng.poisson(1.5, size=n)
    score = -0.05 * tenure + 0.04 * monthly + 0.6 * calls - 1.0 * (plan == "family") - 1.5
    left = rng.random(n) < 1 / (1 + np.exp(-score))
    return pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "plan": plan,
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "support_calls": calls,
            "churned": np.where(left, "yes", "no"),
        }
    )


def houses(n: int, rng: np.random.Generator) -> pd.DataFrame:
    city = rng.choice(["Lyon", "Nantes", "Paris"], size=n, p=[0.35, 0.35, 0.3])
    area = np.round(rng.gamma(6, 15, size=n), 1)
    rooms = np.clip(np.round(area / 25 + rng.normal(0, 0.8, size=n)), 1, None).astype(int)
    age = rng.integers(0, 100, size=n)
    per_m2 = np.select([city == "Paris", city == "Lyon"], [10.0, 5.0], 3.5)
    price = area * per_m2 * (1 - age / 300) + 8 * rooms + rng.normal(0, 25, size=n)
    return pd.DataFrame(
        {"area_m2": area, "rooms": rooms, "age_years": age, "city": city, "price": price.round(1)}
    )


def main() -> None:
    rng = np.random.default_rng(0)
    table = churn(1200, rng)
    table.to_csv(HERE / "churn.csv", index=False)
    churn(8, rng).drop(columns="churned").to_csv(HERE / "churn_new.csv", index=False)
    houses(800, rng).to_csv(HERE / "houses.csv", index=False)
    houses(200, rng).to_csv(HERE / "houses_test.csv", index=False)
    houses(8, rng).drop(columns="price").to_csv(HERE / "houses_new.csv", index=False)


if __name__ == "__main__":
    main()
