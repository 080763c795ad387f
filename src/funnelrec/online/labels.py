"""The label join: impressions + later positives of the same (user, item) inside a label window
→ labelled samples with delayed positives (what the learner's model updates train on).

An *open sample* is an impression (user_id, item_id, ts, request_id) waiting for its labels. A
positive event e of (u, i) at time t_e joins the latest open sample of (u, i) with

    ts ≤ t_e ≤ ts + label_window_s

and sets its labels: click ← 1 (a click), like ← 1 (a like), purchase ← 1 (a purchase), cart ← 1
(an add to cart), watch_time += value (a watch_time event, seconds). Follow and unfollow label
nothing. Which of these labels which ranker task is the funnel's label map's business
(online/samples.py `task_targets`): a shop's `cart: {task: conversion}` trains on the cart column.
A sample is emitted once its window has closed, watermark > ts + label_window_s, where the
watermark is the largest event ts seen so far (event time, not wall time: a replay of a day's
log joins as it was lived). Its labels are then final; a positive arriving later does not
change an emitted sample (it opens an organic one, below).

Organic positives: a positive with no open impression of (u, i) inside the window (the user
found the item elsewhere — search, a link) opens a sample of its own at ts = t_e with
request_id = the event's, carrying that event's label; later positives of (u, i) inside its
window join it like any other. So a click on an item never shown is a positive sample, never
lost, and an impression without any positive is a negative (all labels 0) — for the ranker
only: recall never takes impressions as negatives.

Events are joined in (ts, offset) order within a batch. An impression that arrives after a
positive of an earlier ts does not catch it (that positive was organic).

    join = LabelJoin(window_s=1800)
    samples, pending = join.step(events, pending)     # pending: the open samples (durable state)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError

#: a labelled sample's columns, the join's output (cart last: it came later, and a frame built
#: without it is read as cart = 0 — online/samples.py `check_samples`)
SAMPLE_COLUMNS = ("user_id", "item_id", "ts", "request_id", "click", "like", "watch_time", "purchase", "cart")
PENDING_SCHEMA = {"user_id": pl.Utf8, "item_id": pl.Utf8, "ts": pl.Int64, "request_id": pl.Utf8,
                  "click": pl.Int8, "like": pl.Int8, "watch_time": pl.Float64, "purchase": pl.Int8, "cart": pl.Int8}
#: event type → the label column it sets
LABEL_OF = {"click": "click", "like": "like", "purchase": "purchase", "watch_time": "watch_time", "cart": "cart"}


def empty_samples() -> pl.DataFrame:
    return pl.DataFrame(schema=PENDING_SCHEMA)


@dataclass(frozen=True)
class LabelJoin:
    window_s: int = 1800

    def __post_init__(self) -> None:
        if isinstance(self.window_s, bool) or not isinstance(self.window_s, int) or self.window_s < 0:
            raise ConfigError(f"label_window_s must be an int ≥ 0 (seconds), got {self.window_s!r}")

    def step(self, events: pl.DataFrame, pending: pl.DataFrame, watermark: int | None = None
             ) -> tuple[pl.DataFrame, pl.DataFrame, int | None]:
        """(samples whose window closed, the still-open samples, the new watermark). `events`:
        checked events (columns user_id, item_id, type, value, ts, request_id; plus offset when
        they came from a source); `pending`: the open samples of the previous step."""
        if "cart" not in pending.columns:  # open samples kept before the cart label: none was carted
            pending = pending.with_columns(pl.lit(0, pl.Int8).alias("cart"))
        rows = pending.select(list(PENDING_SCHEMA)).rows()
        samples = [list(r) for r in rows]
        open_by: dict[tuple[str, str], list[int]] = {}
        for k, r in enumerate(samples):
            open_by.setdefault((r[0], r[1]), []).append(k)
        if events.height:
            ev = events.with_row_index("_pos").sort(["ts", "_pos"])
            for u, i, typ, val, ts, rid in ev.select(["user_id", "item_id", "type", "value", "ts",
                                                      "request_id"]).iter_rows():
                key = (u, i)
                if typ == "impression":
                    open_by.setdefault(key, []).append(len(samples))
                    samples.append([u, i, int(ts), rid, 0, 0, 0.0, 0, 0])
                    continue
                col = LABEL_OF.get(typ)
                if col is None or (col == "watch_time" and not val > 0):
                    continue
                hit = None
                for k in open_by.get(key, ()):  # the latest open sample whose window holds ts
                    if samples[k][2] <= ts <= samples[k][2] + self.window_s and (
                            hit is None or samples[k][2] >= samples[hit][2]):
                        hit = k
                if hit is None:  # organic: a sample of its own at the positive's time
                    hit = len(samples)
                    open_by.setdefault(key, []).append(hit)
                    samples.append([u, i, int(ts), rid, 0, 0, 0.0, 0, 0])
                s = samples[hit]
                if col == "watch_time":
                    s[6] += float(val)
                else:
                    s[SAMPLE_COLUMNS.index(col)] = 1
            top = int(ev["ts"].max())
            watermark = top if watermark is None else max(watermark, top)
        frame = pl.DataFrame(samples, schema=PENDING_SCHEMA, orient="row") if samples else empty_samples()
        if watermark is None:
            return empty_samples(), frame, watermark
        closed = frame["ts"].to_numpy() + self.window_s < watermark if frame.height else np.zeros(0, bool)
        mask = pl.Series(closed)
        done = frame.filter(mask).sort(["ts", "user_id", "item_id"], maintain_order=True)
        return done, frame.filter(~mask), watermark
