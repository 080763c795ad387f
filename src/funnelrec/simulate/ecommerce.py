"""A generated e-commerce log in the shape teams export them: what `funnelrec init` is tested and
benchmarked on (a newcomer's files, not the contract's).

    paths = write_ecommerce_files("shop/", n_events=300_000)
    # shop/events.parquet  visitor (str), sku (str), ts_ms (unix ms), event_type, device (some
    #                      missing), session (an extra column nobody asked for)
    # shop/items.csv       sku, title (unique), category, brand (some missing), tags ('|'-lists), price
    # shop/users.csv       visitor, country, segment (some missing)

The world: items belong to categories (Zipf-sized) and carry a lognormal popularity; each user
prefers two categories and one "style" tag within them. A touch picks the user (lognormal
activity), a category (preferred with probability 0.85) and an item (by popularity, boosted 4×
for the user's style); every touch is a view, a share become clicks, carts and purchases
(funnel rates 0.35 → 0.3 → 0.5), seconds apart, within the 30 days before `end_ts`. So item
co-occurrence, category affinity and a conversion signal exist to be learned; no figure
computed from it is a claim about real shops.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

EVENT_FUNNEL = (("click", 0.35), ("cart", 0.30), ("purchase", 0.50))  # P(next step | previous)


def ecommerce_log(n_events: int = 300_000, n_users: int | None = None, n_items: int | None = None,
                  n_categories: int = 40, seed: int = 0, end_ts: int | None = None
                  ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(events, items, users) frames of the world in the module doc."""
    rng = np.random.default_rng(seed)
    n_users = n_users or max(50, n_events // 15)
    n_items = n_items or max(50, n_events // 40)
    end_ts = int(end_ts if end_ts is not None else time.time() - 3600)
    start = end_ts - 30 * 86400
    # items: category (Zipf sizes), style (one of 4 per category), popularity
    cat_w = 1.0 / np.arange(1, n_categories + 1) ** 0.8
    cat = rng.choice(n_categories, size=n_items, p=cat_w / cat_w.sum())
    style = rng.integers(0, 4, size=n_items)
    pop = rng.lognormal(0.0, 1.2, size=n_items)
    n_brands = max(5, n_items // 25)
    brand_cat = rng.integers(0, n_categories, size=n_brands)
    brand = np.array([rng.choice(np.flatnonzero(brand_cat == c)) if (brand_cat == c).any()
                      else rng.integers(0, n_brands) for c in cat])
    # users: two preferred categories, a preferred style, an activity
    pref = rng.integers(0, n_categories, size=(n_users, 2))
    ustyle = rng.integers(0, 4, size=n_users)
    act = rng.lognormal(0.0, 1.0, size=n_users)
    n_touch = int(n_events / (1 + 0.35 + 0.35 * 0.3 + 0.35 * 0.3 * 0.5))
    u = rng.choice(n_users, size=n_touch, p=act / act.sum())
    in_pref = rng.random(n_touch) < 0.85
    c = np.where(in_pref, pref[u, rng.integers(0, 2, size=n_touch)], rng.integers(0, n_categories, size=n_touch))
    by_cat = [np.flatnonzero(cat == k) for k in range(n_categories)]
    items = np.empty(n_touch, np.int64)
    for k in range(n_categories):  # one vectorised draw per (category, style) cell of the touches
        rows = np.flatnonzero(c == k)
        cand = by_cat[k]
        if not len(rows):
            continue
        if not len(cand):
            cand = np.arange(n_items)
        for s in range(4):
            sub = rows[ustyle[u[rows]] == s]
            if not len(sub):
                continue
            w = pop[cand] * np.where(style[cand] == s, 4.0, 1.0)
            items[sub] = cand[rng.choice(len(cand), size=len(sub), p=w / w.sum())]
    ts = rng.integers(start, end_ts - 600, size=n_touch) * 1000
    steps = [np.ones(n_touch, bool)]
    for _, p in EVENT_FUNNEL:
        steps.append(steps[-1] & (rng.random(n_touch) < p))
    names = ["view"] + [n for n, _ in EVENT_FUNNEL]
    parts = []
    for j, (name, mask) in enumerate(zip(names, steps)):
        idx = np.flatnonzero(mask)
        parts.append(pl.DataFrame({"u": u[idx], "i": items[idx], "ts_ms": ts[idx] + j * rng.integers(5_000, 90_000,
                                                                                                    size=len(idx)),
                                   "event_type": [name] * len(idx), "touch": idx}))
    ev = pl.concat(parts).sort("ts_ms")
    devices = np.array(["mobile", "desktop", "tablet"], dtype=object)
    dev = devices[rng.integers(0, 3, size=ev.height)]
    dev[rng.random(ev.height) < 0.1] = None  # missing values, as exports have them
    events = pl.DataFrame({
        "visitor": pl.Series([f"v{x:06d}" for x in ev["u"].to_list()], dtype=pl.String),
        "sku": pl.Series([f"sku-{x:05d}" for x in ev["i"].to_list()], dtype=pl.String),
        "ts_ms": ev["ts_ms"].cast(pl.Int64),
        "event_type": ev["event_type"],
        "device": pl.Series(dev.tolist(), dtype=pl.String),
        "session": pl.Series([f"s{x:07d}" for x in ev["touch"].to_list()], dtype=pl.String),
    })
    brand_names = np.array([f"brand{b:04d}" for b in range(n_brands)], dtype=object)
    bcol = brand_names[brand]
    bcol[rng.random(n_items) < 0.03] = None
    price = np.round(rng.lognormal(3.0, 0.8, size=n_items), 2).astype(object)
    price[rng.random(n_items) < 0.05] = None
    tags = [f"cat{cat[i]}-style{style[i]}|cat{cat[i]}" + ("|sale" if rng.random() < 0.2 else "") for i in range(n_items)]
    items_df = pl.DataFrame({
        "sku": [f"sku-{i:05d}" for i in range(n_items)],
        "title": [f"Product {i} of category {cat[i]}" for i in range(n_items)],
        "category": [f"cat{x}" for x in cat],
        "brand": pl.Series(bcol.tolist(), dtype=pl.String),
        "tags": tags,
        "price": pl.Series(price.tolist(), dtype=pl.Float64),
    })
    countries = np.array(["DE", "FR", "US", "GB", "PL", "ES"], dtype=object)
    seg = np.array(["new", "returning", "vip"], dtype=object)[rng.integers(0, 3, size=n_users)]
    seg[rng.random(n_users) < 0.05] = None
    users_df = pl.DataFrame({
        "visitor": [f"v{x:06d}" for x in range(n_users)],
        "country": countries[rng.integers(0, len(countries), size=n_users)].tolist(),
        "segment": pl.Series(seg.tolist(), dtype=pl.String),
    })
    return events, items_df, users_df


def write_ecommerce_files(directory: str | Path, n_events: int = 300_000, seed: int = 0,
                          **kw) -> dict[str, Path]:
    """Write events.parquet, items.csv, users.csv (see the module doc) into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    events, items, users = ecommerce_log(n_events, seed=seed, **kw)
    paths = {"interactions": d / "events.parquet", "items": d / "items.csv", "users": d / "users.csv"}
    events.write_parquet(paths["interactions"])
    items.write_csv(paths["items"])
    users.write_csv(paths["users"])
    return paths
