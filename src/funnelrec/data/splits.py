"""Train/valid/test splits of the interactions table.

- `random_split_by_user`: RecBole's RS [0.8, 0.1, 0.1] with group_by=user, order=RO — a seeded
  shuffle of all interactions, then each user's rows cut by RecBole's own rounding rule
  (`_calcu_split_ids`), so split sizes equal RecBole's (80,808 / 9,596 / 9,596 on ml-100k).
  Repeated (user, item) pairs (view → cart → purchase) are split as pairs: a pair's rows stay
  together (protocol "rs-811-by-pair").
- `random_split_global`: RS over all rows (the CTR protocol).
- `leave_one_out`: by time, per user: last → test, second-to-last → valid.
- `temporal_split`: a global time cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError


@dataclass
class Split:
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    protocol: str

    def sizes(self) -> tuple[int, int, int]:
        return self.train.height, self.valid.height, self.test.height


def _check_ratios(ratios: tuple[float, ...]) -> None:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")


def recbole_split_counts(total: int, ratios: tuple[float, ...]) -> list[int]:
    """RecBole 1.2.1 `Dataset._calcu_split_ids`, returned as part sizes."""
    cnt = [int(r * total) for r in ratios]
    cnt[0] = total - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


def random_split_by_user(inter: pl.DataFrame, ratios: tuple[float, ...] = (0.8, 0.1, 0.1), seed: int = 2020) -> Split:
    """RecBole's RS per user. The unit is the (user, item) pair: where a pair has several rows (a
    view, then a cart, then a purchase of one item) all of them go to the part its pair is drawn
    into (protocol "rs-811-by-pair"). Split row by row, the purchase would land in valid and the
    view in train — the item then sits in the user's history, no channel may recall it again,
    and the ranker's conversion task never sees a positive among its candidates; the test part
    would hold items nobody may recommend. With one row per pair (MovieLens) the two are the
    same split, row for row."""
    _check_ratios(ratios)
    if {"user_idx", "item_idx"} <= set(inter.columns):
        pairs = inter.select("user_idx", "item_idx").unique(maintain_order=True)
        if pairs.height < inter.height:
            part = _split_rows(pairs, ratios, seed)
            tagged = pl.concat([p.with_columns(pl.lit(k, pl.Int8).alias("_part")) for k, p in enumerate(part)])
            rows = inter.with_row_index("_row").join(tagged, on=["user_idx", "item_idx"], how="left").sort("_row")
            return Split(*[rows.filter(pl.col("_part") == k).drop("_row", "_part") for k in range(3)],
                         protocol="rs-811-by-pair")
    return Split(*_split_rows(inter, ratios, seed), protocol="recbole-rs-811")


def _split_rows(inter: pl.DataFrame, ratios: tuple[float, ...], seed: int) -> list[pl.DataFrame]:
    """RecBole 1.2.1's RS with group_by=user, order=RO: a seeded shuffle of the rows, then each
    user's rows cut by `recbole_split_counts`; the three parts keep the shuffled order."""
    rng = np.random.default_rng(seed)
    n = inter.height
    shuffled = inter[rng.permutation(n)].with_row_index("_order")
    # rank of each row within its user in shuffled order, and the user's count
    ranked = shuffled.with_columns(
        pl.col("_order").rank("ordinal").over("user_idx").cast(pl.Int64).alias("_r"),
        pl.len().over("user_idx").cast(pl.Int64).alias("_n"),
    )
    counts = ranked.select("_n").unique()["_n"].to_list()
    bounds = {c: recbole_split_counts(c, ratios) for c in counts}
    b = pl.DataFrame({"_n": list(bounds), "_b0": [v[0] for v in bounds.values()],
                      "_b1": [v[0] + v[1] for v in bounds.values()]}, schema={"_n": pl.Int64, "_b0": pl.Int64, "_b1": pl.Int64})
    ranked = ranked.join(b, on="_n", how="left").sort("_order")
    part = (
        pl.when(pl.col("_r") <= pl.col("_b0")).then(0).when(pl.col("_r") <= pl.col("_b1")).then(1).otherwise(2)
    )
    ranked = ranked.with_columns(part.alias("_part"))
    drop = ["_order", "_r", "_n", "_b0", "_b1", "_part"]
    return [ranked.filter(pl.col("_part") == k).drop(drop) for k in range(3)]


def random_split_global(inter: pl.DataFrame, ratios: tuple[float, ...] = (0.8, 0.1, 0.1), seed: int = 2020) -> Split:
    _check_ratios(ratios)
    rng = np.random.default_rng(seed)
    shuffled = inter[rng.permutation(inter.height)]
    c = recbole_split_counts(inter.height, ratios)
    return Split(shuffled[: c[0]], shuffled[c[0] : c[0] + c[1]], shuffled[c[0] + c[1] :], protocol="rs-811-global")


def leave_one_out(inter: pl.DataFrame) -> Split:
    """Per user by time: last interaction → test, the one before → valid (users with ≥ 3)."""
    ranked = inter.with_row_index("_row").with_columns(
        pl.struct("timestamp", "_row").rank("ordinal", descending=True).over("user_idx").alias("_rk"),
        pl.len().over("user_idx").alias("_n"),
    )
    test = (pl.col("_rk") == 1) & (pl.col("_n") >= 3)
    valid = (pl.col("_rk") == 2) & (pl.col("_n") >= 3)
    drop = ["_row", "_rk", "_n"]
    return Split(
        ranked.filter(~test & ~valid).drop(drop),
        ranked.filter(valid).drop(drop),
        ranked.filter(test).drop(drop),
        protocol="loo-time",
    )


def temporal_split(inter: pl.DataFrame, ratios: tuple[float, ...] = (0.8, 0.1, 0.1)) -> Split:
    """A global time cut: the earliest share of rows trains, the latest tests."""
    _check_ratios(ratios)
    ordered = inter.sort("timestamp", maintain_order=True)
    c = recbole_split_counts(ordered.height, ratios)
    return Split(ordered[: c[0]], ordered[c[0] : c[0] + c[1]], ordered[c[0] + c[1] :], protocol="temporal")
