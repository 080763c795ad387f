"""The Parquet tables of the offline jobs, and a channel's fitted state built from them.

An engine writes, per channel, a folder of tables (each a Parquet file or a Spark folder of part
files); `load_channel` reads them into the attributes `channel.fit` would have set, so a funnel
fitted from an engine's tables serves through the same code as one fitted in-process.

    neighbours       itemcf, swing   item, neighbour, rank, similarity (float64), support
                                     (itemCF: |U_i ∩ U_j|; Swing: user pairs with overlap ≥ 2)
    cosine           swing with cosine_blend > 0: itemCF cosine lists, same columns
    item_users       usercf          item, user, weight: the capped item → user sample (float32 weights)
    item_weight      usercf          item, n_users, weight = 1/log(1 + |U_i|) (1 without hot damping)
    user_neighbours  usercf          user, neighbour, rank, similarity: sim(u, v) of the training users
                                     (what a request with no extra history computes; for i2u/u2u jobs)
    popularity       hot             item, events, popularity = Σ exp(−(now − t)/τ)
    fresh_list       fresh           rank, item: the global list, newest first
    meta.json        all             now, n_users, n_items, the channel kind and params

The history a channel serves from (the users' seen items, ratings) is the training data itself,
taken from `TrainData` as `fit` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from funnelrec.core.errors import DataError
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import UserHistory, rating_matrix, row_topk
from funnelrec.recall.base import RecallChannel
from funnelrec.recall.hot import ranked_list
from funnelrec.recall.itemcf import normalize_rows_max

NEIGHBOUR_COLUMNS = ("item", "neighbour", "rank", "similarity", "support")


def read_table(folder: Path, name: str, columns: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Table `name` of `folder`: `name.parquet` (a file, or Spark's folder of part files)."""
    p = Path(folder) / f"{name}.parquet"
    if not p.exists():
        raise DataError(f"engine table {p} not found (the job did not write it)")
    df = pl.read_parquet(p / "*.parquet" if p.is_dir() else p)
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(f"engine table {p}: missing column(s) {', '.join(missing)}; has {', '.join(df.columns)}")
    return df


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "meta.json").write_text(json.dumps(meta, default=str))


def read_meta(folder: Path) -> dict[str, Any]:
    p = Path(folder) / "meta.json"
    if not p.exists():
        raise DataError(f"engine table folder {folder}: meta.json not found")
    return json.loads(p.read_text())


def neighbour_csr(df: pl.DataFrame, n_items: int) -> sp.csr_matrix:
    """(I, I) float32 CSR, row i = item i's neighbour list (similarity > 0), as the kernels build it."""
    sim = df["similarity"].to_numpy().astype(np.float32)
    keep = sim > 0
    out = sp.csr_matrix((sim[keep], (df["item"].to_numpy()[keep], df["neighbour"].to_numpy()[keep])),
                        shape=(n_items, n_items))
    out.sort_indices()
    return out


def _check_shape(folder: Path, meta: dict, data: TrainData) -> None:
    if (meta["n_users"], meta["n_items"]) != (data.n_users, data.n_items):
        raise DataError(f"engine tables {folder} are for {meta['n_users']} users × {meta['n_items']} items, "
                        f"the training data has {data.n_users} × {data.n_items}")


def load_channel(channel: RecallChannel, folder: Path, data: TrainData) -> RecallChannel:
    """Set `channel`'s fitted state from the tables in `folder` (written by an engine for this
    channel's kind and config on `data`); returns the channel, fitted."""
    folder = Path(folder)
    meta = read_meta(folder)
    _check_shape(folder, meta, data)
    kind = meta["kind"]
    cfg = channel.config
    if kind in ("itemcf", "swing"):
        N = neighbour_csr(read_table(folder, "neighbours", NEIGHBOUR_COLUMNS), data.n_items)
        if kind == "itemcf" and cfg.normalize:
            N = normalize_rows_max(N)
        if kind == "swing" and cfg.cosine_blend > 0:  # as SwingRecall.fit: blend of row-max-normalized lists
            cos = neighbour_csr(read_table(folder, "cosine", NEIGHBOUR_COLUMNS), data.n_items)
            N = row_topk((1 - cfg.cosine_blend) * normalize_rows_max(N)
                         + cfg.cosine_blend * normalize_rows_max(cos), cfg.k)
        channel.neighbours_ = N
        channel.neighbours_t_ = sp.csr_matrix(N.T)
        channel.history_ = channel._fit_history(data, cfg.use_rating)
    elif kind == "usercf":
        w = read_table(folder, "item_weight", ("item", "n_users", "weight")).sort("item")
        if w.height != data.n_items:
            raise DataError(f"engine table {folder}/item_weight.parquet: {w.height} rows for {data.n_items} items")
        R = sp.csr_matrix(data.csr, dtype=np.float32)
        channel.item_weight_ = w["weight"].to_numpy().astype(np.float32)
        channel.user_len_ = np.asarray(R.getnnz(axis=1), np.float64)
        channel.item_users_ = sp.csr_matrix(R.T)
        s = read_table(folder, "item_users", ("item", "user", "weight"))
        W = sp.csr_matrix((s["weight"].to_numpy().astype(np.float32), (s["item"].to_numpy(), s["user"].to_numpy())),
                          shape=(data.n_items, data.n_users))
        W.sort_indices()
        channel.weighted_item_users_ = W
        channel.inv_sqrt_len_ = 1.0 / np.sqrt(np.maximum(channel.user_len_, 1.0))
        channel.ratings_ = rating_matrix(data) if cfg.use_rating else R
        channel.history_ = UserHistory(data.csr)
    elif kind == "hot":
        p = read_table(folder, "popularity", ("item", "popularity"))
        pop = np.zeros(data.n_items)
        pop[p["item"].to_numpy()] = p["popularity"].to_numpy()
        channel.popularity_ = pop
        channel.now_ = int(meta["now"])
        channel.items_, channel.scores_ = ranked_list(pop, cfg.max_items)
        channel.history_ = UserHistory(data.csr)
    elif kind == "fresh":
        items = data.dataset.items
        channel.publish_ = items[cfg.time_column].cast(float).fill_null(float("nan")).to_numpy().astype(np.float64)
        channel.now_ = data.now
        channel.items_ = read_table(folder, "fresh_list", ("rank", "item")).sort("rank")["item"].to_numpy().astype(np.int64)
        channel.history_ = UserHistory(data.csr)
    else:
        raise DataError(f"engine tables {folder}: no loader for channel kind {kind!r}")
    channel.fitted_ = True
    return channel
