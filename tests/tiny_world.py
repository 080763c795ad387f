"""A tiny world (40 users × 30 items) with every attribute the recall channels read, fitted fast.

In tests/ (on sys.path through tests/conftest.py): tests/recall and tests/contracts both use it."""

import numpy as np
import polars as pl

from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.schema import Schema

DAY = 86400


def make_world(seed: int = 0, n_users: int = 40, n_items: int = 30, n_inter: int = 400) -> TrainData:
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    u = rng.integers(0, n_users, n_inter)
    i = rng.choice(n_items, n_inter, p=pop / pop.sum())
    t = 1_000_000_000 + rng.integers(0, 100 * DAY, n_inter)
    inter = pl.DataFrame({"user_id": u + 1, "item_id": i + 1, "rating": rng.integers(1, 6, n_inter).astype(np.float32),
                          "timestamp": t}).unique(["user_id", "item_id"], keep="first", maintain_order=True)
    tags = ["drama", "comedy", "action", "horror"]
    people = [f"p{k}" for k in range(8)]
    items = pl.DataFrame({
        "item_id": np.arange(1, n_items + 1),
        "release_year": [str(1990 + k % 5) for k in range(n_items)],
        "publish_time": 1_000_000_000 + rng.integers(-50 * DAY, 100 * DAY, n_items),
        "genres": [[tags[k % 4], tags[(k * 3 + 1) % 4]] if k % 3 else [tags[k % 4]] for k in range(n_items)],
        "directors": [[people[k % 8]] for k in range(n_items)],
        "authors": [[people[k % 8], people[(k + 3) % 8]] for k in range(n_items)],
    })
    users = pl.DataFrame({"user_id": np.arange(1, n_users + 1),
                          "region": [str(k % 3) if k % 7 else None for k in range(n_users)],
                          "age_band": [["18-24", "25-34", "35-44"][k % 3] for k in range(n_users)],
                          "gender": ["MF"[k % 2] for k in range(n_users)],
                          "occupation": [["writer", "other"][k % 2] for k in range(n_users)]})
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "rating": "label",
                                  "timestamp": "time"},
                    users={"user_id": "categorical", "region": "categorical", "age_band": "categorical",
                           "gender": "categorical", "occupation": "categorical"},
                    items={"item_id": "categorical", "release_year": "categorical", "publish_time": "time", "genres": "multi",
                           "directors": "multi", "authors": "multi"})
    ds = Dataset.build("tiny", inter, schema, users=users, items=items)
    return TrainData(ds, ds.interactions)

