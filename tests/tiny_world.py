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



def known_order_funnel(priority: list[str] | None = None):
    """12 items; users 1..11, user u consumed items 1..12-u, so item j (j ≤ 11) has 12 − j
    consumptions; the probe user 99 consumed only item 12. Hot by plain count (tau 0) and a
    cache channel, no ranker: the probe's fine-ranked list is items 1, 2, …, 11. Items 1-3 share
    category "a", capped at 2 in the top k by the re-ranker, so k = 3 shows 1, 2, 4. `priority`:
    the merge's channel order (default the config's)."""
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig

    t = 1_700_000_000
    rows = [(u, j) for u in range(1, 12) for j in range(1, 13 - u)] + [(99, 12)]
    inter = pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                          "timestamp": [t] * len(rows)})
    items = pl.DataFrame({"item_id": list(range(1, 13)), "cat": ["a", "a", "a"] + [f"c{j}" for j in range(4, 13)]})
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time"},
                    items={"item_id": "categorical", "cat": "categorical"})
    ds = Dataset.build("known-order", inter, schema, items=items)
    merge: dict = {"total": 40}
    if priority is not None:
        merge["priority"] = priority
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "hot", "n": 20, "params": {"tau_days": 0}}, {"name": "cache", "n": 20}],
                   "merge": merge},
        "rerank": {"method": "cap", "column": "cat", "max_per_category": 2},
        "k": 3})
    return FunnelBuilder(cfg).fit(ds, ds.interactions)
