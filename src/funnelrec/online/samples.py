"""Labelled impressions → the fine ranker's input, exactly as the served ranker sees it.

A labelled sample is an impression (user_id, item_id, ts, request_id) with its labels joined
from later events inside the label window (click, like, purchase 0/1; watch_time seconds):

    SAMPLE_COLUMNS = user_id, item_id, ts, request_id, click, like, watch_time, purchase

`rank_samples(funnel, frame)` gives each sample the dense features `Funnel.rank_tasks` gives a
candidate at serving time (train/candidate_ranker.py, features/candidates.py:RankFeatures):

    X = [recall-source block | history-match block]      (M, d) unscaled

- recall-source block: the samples' users go through the funnel's own recall → merge →
  `attach_features` path (`Funnel.candidates`, no request state: the fitted histories), and a
  sample whose item is in its user's merged list takes that candidate's attached row (recalled,
  normalized score and reciprocal rank per channel, merge position, popularity, activity,
  number of channels). Recomputing rather than storing the served row keeps the samples free
  of any serving-side log format, and the recall of a fitted funnel without request state is
  deterministic, so an impression of a recommended item finds its row again.
- an item no channel recalls for its user (a click found outside the candidates) takes the
  random-pair form, `RankFeatures.random_pairs` — the form the ranker was trained on for its
  easy negatives: recall block zero but popularity and activity, then the match block.
  `unrecalled="drop"` leaves such samples out instead.
- the recall runs over the channels' histories without the samples' own (user, item) pairs
  (`without_own_pairs`): a count update may already have added the consumption that labels a
  sample, which would exclude the item from its own recall (a label leak).
- history-match block: `HistoryMatch.transform` of the served ranker over the fitted history
  (what `rank_stage` passes when serving).

Users or items outside the funnel's catalogue have no dense index and are left out (counted in
`n_dropped`): a user enters the catalogue through the catalogue's upsert, not through a label.
Labels per task: "ctr" ← click, "like" ← like (the ranker's TASK_LABELS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError, DataError

SAMPLE_COLUMNS = ("user_id", "item_id", "ts", "request_id", "click", "like", "watch_time", "purchase")
TASK_COLUMNS = {"ctr": "click", "like": "like"}  # ranker task → the sample column that labels it
UNRECALLED = ("random_pairs", "drop")


@dataclass
class RankSamples:
    """Samples in the ranker's terms: dense user/item indices, unscaled dense features, labels.

    users, items: (M,) int64; X: (M, d) float32; recalled: (M,) bool (the item was in its user's
    merged candidates); ts: (M,) int64; labels: {column: (M,) float32} for click, like, purchase."""

    users: np.ndarray
    items: np.ndarray
    X: np.ndarray
    recalled: np.ndarray
    ts: np.ndarray
    labels: dict[str, np.ndarray]
    n_dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def task_labels(self, tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {t: self.labels[TASK_COLUMNS[t]] for t in tasks}


def check_samples(frame: Any, what: str = "samples") -> pl.DataFrame:
    """The frame, or a DataError naming the missing columns / bad label values."""
    if not isinstance(frame, pl.DataFrame):
        raise DataError(f"{what} must be a polars DataFrame with columns {', '.join(SAMPLE_COLUMNS)}")
    missing = [c for c in SAMPLE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing columns {missing}; a labelled sample has {', '.join(SAMPLE_COLUMNS)}")
    for c in ("click", "like", "purchase"):
        bad = frame.filter(~pl.col(c).is_in([0, 1]) | pl.col(c).is_null()).height
        if bad:
            raise DataError(f"{what}: column {c!r} must be 0/1; {bad} rows are not")
    return frame


def rank_samples(funnel: Any, frame: pl.DataFrame, unrecalled: str = "random_pairs",
                 what: str = "samples") -> RankSamples:
    """The served features of every sample of `frame` (module doc); `funnel` must have a ranker."""
    from funnelrec.features.candidates import RankFeatures

    if unrecalled not in UNRECALLED:
        raise ConfigError(f"unrecalled must be one of {', '.join(UNRECALLED)}, got {unrecalled!r}")
    frame = check_samples(frame, what)
    ranker = funnel.ranker_
    if ranker is None or not hasattr(ranker, "features_"):
        raise ConfigError("online ranker update: the funnel has no fitted fine ranker (rank: section)")
    ds = funnel.dataset_
    u = ds.user_ids.indices(frame["user_id"].cast(pl.Utf8).to_list())
    i = ds.item_ids.indices(frame["item_id"].cast(pl.Utf8).to_list())
    ok = (u >= 0) & (i >= 0)
    dropped = {"unknown_user": int((u < 0).sum()), "unknown_item": int(((u >= 0) & (i < 0)).sum())}
    u, i = u[ok], i[ok]
    keep = pl.Series(ok)
    sub = frame.filter(keep)
    labels = {c: sub[c].cast(pl.Float32).to_numpy() for c in ("click", "like", "purchase")}
    ts = sub["ts"].cast(pl.Int64).to_numpy()
    feats: RankFeatures = ranker.features_
    n_dense = len(feats.mean_)
    match = feats.match_
    X = np.zeros((len(u), n_dense), np.float32)
    recalled = np.zeros(len(u), bool)
    if len(u):
        users = np.unique(u)
        # recall → merge → attach_features, as Funnel.run does, over histories without the
        # samples' own (user, item) pairs (`without_own_pairs`)
        merged = without_own_pairs(funnel, u, i).candidates(users)
        I = max(ds.n_items, 1)
        sizes = np.array([len(m) for m in merged], np.int64)
        cand_keys = np.repeat(np.arange(len(users), dtype=np.int64), sizes) * I + (
            np.concatenate([m.items for m in merged]).astype(np.int64) if sizes.sum() else np.empty(0, np.int64))
        rec_rows = (np.concatenate([m.features for m in merged]).astype(np.float32) if sizes.sum()
                    else np.empty((0, n_dense - len(match.names_)), np.float32))
        order = np.argsort(cand_keys, kind="stable")
        sorted_keys = cand_keys[order]
        keys = np.searchsorted(users, u) * I + i
        pos = np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))
        recalled = (sorted_keys[pos] == keys) if len(sorted_keys) else np.zeros(len(u), bool)
        n_rec = rec_rows.shape[1]
        if recalled.any():
            X[recalled, :n_rec] = rec_rows[order[pos[recalled]]]
            X[recalled, n_rec:] = match.transform(u[recalled], i[recalled])
        if (~recalled).any():
            X[~recalled] = feats.random_pairs(u[~recalled], i[~recalled], n_dense, funnel.stats_.item_log_pop,
                                              funnel.stats_.user_log_act, match)
    out = RankSamples(u, i, X, recalled, ts, labels, dropped)
    if unrecalled == "drop":
        m = out.recalled
        out = RankSamples(u[m], i[m], X[m], recalled[m], ts[m], {k: v[m] for k, v in labels.items()},
                          {**dropped, "unrecalled": int((~m).sum())})
    return out


def _minus_pairs(m: Any, pairs: Any) -> Any:
    """m with the entries at the nonzeros of `pairs` removed (same shape)."""
    import scipy.sparse as sp

    out = sp.csr_matrix(m - m.multiply(pairs))
    out.eliminate_zeros()
    return out


def without_own_pairs(funnel: Any, users: np.ndarray, items: np.ndarray) -> Any:
    """`funnel` with the pairs (users[k], items[k]) taken out of every channel's seen history
    (`history_`, a recall/_common.py UserHistory); the funnel itself is unchanged.

    Why: the learner applies a step's count updates (itemCF/Swing/hot/fresh `update`, which add
    the step's consumptions to the channel's history) before the model updaters run, and the
    samples' labels are those consumptions. Recomputed over the updated histories, every clicked
    sample item is "seen" and excluded from those channels' recall, while the shown-not-clicked
    ones are not: the label leaks into the recall block (clicks lose their itemCF/Swing/hot
    features, or fall to the random-pair form), the update learns "recalled ⇒ not clicked" and
    the served ranking inverts. When the impression was served, its item was not excluded (it
    was shown) and the consumption that labels it had not happened yet: a history without the
    pair is the one the request saw for that item."""
    import copy

    import scipy.sparse as sp

    from funnelrec.recall._common import UserHistory

    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    parts: dict[str, Any] = {}
    drop_cache: dict[int, UserHistory] = {}
    for name, ch in funnel.channels_.items():
        h = getattr(ch, "history_", None)
        if not isinstance(h, UserHistory):
            continue
        if id(h) not in drop_cache:
            U, I = h.seen.shape
            ok = (users >= 0) & (users < U) & (items >= 0) & (items < I)
            pairs = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (users[ok], items[ok])), shape=(U, I))
            pairs.sum_duplicates()
            pairs.data[:] = 1.0
            hit = h.seen.multiply(pairs)
            if hit.nnz == 0:
                drop_cache[id(h)] = h
            else:
                seen = _minus_pairs(h.seen, pairs)
                drop_cache[id(h)] = UserHistory(seen, None if h.weights is h.seen else _minus_pairs(h.weights, pairs))
        nh = drop_cache[id(h)]
        if nh is not h:
            new = copy.copy(ch)
            new.history_ = nh
            parts[f"channels__{name}"] = new
    return funnel.with_components(**parts) if parts else funnel


def samples_from_interactions(funnel: Any, users: np.ndarray, rated: pl.DataFrame, k: int,
                              exclude: pl.DataFrame | None = None, recommended: list | None = None) -> pl.DataFrame:
    """Labelled samples from an interaction log without impressions (a ratings dataset), for
    benchmarks and tests: per user of `users` (dense indices), the funnel's top `k` (`Funnel.run`
    without request state, or `recommended[r]` item arrays) as impressions — click = 1 when the
    user has the item in `rated` (user_idx, item_idx, timestamp), ts = that time or, for a shown
    item not clicked, the user's first time in `rated` — plus the user's other `rated` items as
    clicks no impression led to. Items the user has in `exclude` are left out (a later window
    must not relabel what an earlier one clicked). Columns: SAMPLE_COLUMNS (like = purchase = 0)."""
    ds = funnel.dataset_
    users = np.asarray(users, np.int64)
    recs = recommended if recommended is not None else [r.items for r in funnel.run(users, k=k)]

    def by_user(frame: pl.DataFrame | None) -> dict[int, dict[int, int]]:
        out: dict[int, dict[int, int]] = {}
        if frame is None:
            return out
        for u, i, ts in zip(*(frame[c].to_numpy() for c in ("user_idx", "item_idx", "timestamp"))):
            out.setdefault(int(u), {}).setdefault(int(i), int(ts))
        return out

    pos, ex = by_user(rated), by_user(exclude)
    uid, iid = ds.users["user_id"].cast(pl.Utf8).to_list(), ds.items["item_id"].cast(pl.Utf8).to_list()
    t_default = int(rated["timestamp"].min()) if rated.height else 0
    rows = []
    for u, shown in zip(users.tolist(), recs):
        p, e = pos.get(u, {}), ex.get(u, {})
        t0 = min(p.values()) if p else t_default
        shown = [int(i) for i in np.asarray(shown).tolist() if i >= 0]
        rows += [(uid[u], iid[i], p.get(i, t0), f"r{u}", int(i in p), 0, 0.0, 0) for i in shown if i not in e]
        seen = set(shown)
        rows += [(uid[u], iid[i], ts, f"r{u}", 1, 0, 0.0, 0) for i, ts in p.items() if i not in seen and i not in e]
    schema = {"user_id": pl.Utf8, "item_id": pl.Utf8, "ts": pl.Int64, "request_id": pl.Utf8, "click": pl.Int64,
              "like": pl.Int64, "watch_time": pl.Float64, "purchase": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def later_halves(rest: pl.DataFrame, users: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each user's rows of `rest` split in time: (first ⌊n/2⌋, the others)."""
    r = rest.filter(pl.col("user_idx").is_in(np.asarray(users).tolist())).with_columns(
        pl.col("timestamp").rank("ordinal").over("user_idx").alias("_k"), pl.len().over("user_idx").alias("_n"))
    half = pl.col("_k") <= pl.col("_n") // 2
    return r.filter(half).drop("_k", "_n"), r.filter(~half).drop("_k", "_n")
