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
  sample, which would exclude the item from its own recall (a label leak); with `uncount` the
  count features (`stats_` popularity / activity, which the learner's `count_popularity`
  updates) leave those consumptions out too.
- the request's real-time history is the user's consumptions since the fit (`stream_history`:
  what the updated channels' histories hold beyond the fit-time one), as the service passes
  it (`RequestState.history`): the channels not updated online (EASE, userCF) take it as
  triggers and the match block reads it. Without it a user who arrived after the fit has no
  history in its samples (no EASE / userCF candidate, an empty match block) while its
  requests were served with one — on ml-100k's replay most users are such users.
- `candidate_samples`: positives in the fit's label-set form (train/candidate_ranker.py): each
  positive among its own user's candidates, a share of the others as negatives.
- history-match block: `HistoryMatch.transform` of the served ranker over the fitted history
  (what `rank_stage` passes when serving).

Users or items outside the funnel's catalogue have no dense index and are left out (counted in
`n_dropped`): a user enters the catalogue through the catalogue's upsert, not through a label.
Labels per task (`task_targets`): the funnel's label map decides, read in the events' online
names. A map rule `view: {task: ctr, means: click}` makes ctr a positive of the click column, `cart:
{task: conversion}` and `purchase: {task: conversion, weight: 3}` make conversion a positive of
cart or purchase, weighted by the largest weight among the rules the sample matched, as the fit
weights a pair by the largest weight among its positive rows; a valued rule (`watch: {task:
watch, value: seconds}`) a watch-time task: y = watch_time > 0, weight = the seconds watched.
Without a map, "ctr" ← any of them (the fit takes every row as a positive), "like" ← like, and a
task named after a label column (click, like,
purchase, cart) or with `rank.task_columns` naming one ← that column. A task the stream cannot
label (its fit-time column, e.g. a rating, has no event) is a ConfigError naming it, raised when
the learner starts, not at its first sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.online.labels import LABEL_OF, SAMPLE_COLUMNS

LABELS = tuple(LABEL_OF.values())  # a sample's label columns (online/labels.py)
# without a label map: ranker task → the columns that label it. ctr is fitted on every label row
# as a positive (train/candidate_ranker.py: "interacted"), so online any event after the
# impression is one — a like, a cart or a watch without a click too
TASK_COLUMNS = {"ctr": LABELS, "like": ("like",)}
UNRECALLED = ("random_pairs", "drop")


@dataclass(frozen=True)
class TaskTarget:
    """How one ranker task is labelled from a sample's label columns (module doc): a positive of
    any of `columns`, weighted by the largest weight of the columns it has; `watch`: weighted LR
    on watch_time (y = seconds > 0, weight = the seconds). One difference from the fit remains:
    a sample's seconds are the sum over its label window (online/labels.py), a fitted pair's
    weight the largest of its rows (a pair's samples in the candidate form: their largest too)."""

    columns: tuple[tuple[str, float], ...]
    watch: bool = False

    def of(self, labels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(y 0/1, per-sample weight; 1 on the negatives) as float32 arrays."""
        if self.watch:
            v = np.asarray(labels["watch_time"], np.float64)
            y = v > 0
            return y.astype(np.float32), np.where(y, v, 1.0).astype(np.float32)
        n = len(next(iter(labels.values()))) if labels else 0
        y, w = np.zeros(n, bool), np.zeros(n, np.float64)
        for col, weight in self.columns:
            hit = np.asarray(labels[col]) > 0
            y |= hit
            w = np.where(hit, np.maximum(w, weight), w)
        return y.astype(np.float32), np.where(y, w, 1.0).astype(np.float32)


def task_targets(config: Any, tasks: tuple[str, ...] | list[str]) -> dict[str, TaskTarget]:
    """{task: TaskTarget} of the ranker's `tasks` under the funnel `config`'s label map and rank
    section (module doc); ConfigError naming the task or map key the event stream cannot label."""
    labels = getattr(config, "labels", None)
    rules = dict(getattr(labels, "map", None) or {})
    rank = getattr(config, "rank", None)
    kinds = dict(getattr(rank, "task_kinds", None) or {})
    columns = dict(getattr(rank, "task_columns", None) or {})
    weights = dict(getattr(rank, "weight_columns", None) or {})
    online = ", ".join(LABEL_OF)
    owner: dict[str, tuple[str, str]] = {}  # online label column → (the first rule's event, its task)
    for ev, r in rules.items():
        col = LABEL_OF.get(r.means or ev)
        if r.task and col is not None:
            first = owner.setdefault(col, (ev, r.task))
            if first[1] != r.task:
                raise ConfigError(f"labels.map.{ev}: online, {ev!r} and {first[0]!r} are both stored as "
                                  f"{r.means or ev!r}, so the stream cannot tell task {r.task!r} from "
                                  f"{first[1]!r}; map them to one task or give one another `means:`")
    out: dict[str, TaskTarget] = {}
    for t in tasks:
        mine = [(ev, r) for ev, r in rules.items() if r.task == t]
        watch = kinds.get(t) == "watch_time"
        if mine:
            # the map's own columns are label_<t> and weight_<t> (data/source.py: label_columns)
            for key, given, own in (("task_columns", columns.get(t), f"label_{t}"),
                                    ("weight_columns", weights.get(t), f"weight_{t}")):
                if given not in (None, own):
                    raise ConfigError(f"rank.{key}.{t}: {given!r} overrides labels.map for task {t!r} offline, and "
                                      f"the online learner labels {t!r} from the map's events, so the two would "
                                      f"learn different things: drop rank.{key}.{t} or the map's rules for {t!r}")
            cols: dict[str, float] = {}
            for ev, r in mine:
                stored = r.means or ev
                col = LABEL_OF.get(stored)
                if col is None:
                    raise ConfigError(f"labels.map.{ev}: task {t!r} is learned online from the events its rules name, "
                                      f"and a {ev!r} event is stored as {stored!r}, which labels nothing; give it a "
                                      f"`means:` among {online}, or leave {t!r} out of rank.tasks")
                if r.value and col != "watch_time":
                    raise ConfigError(f"labels.map.{ev}: task {t!r} is a watch-time task (valued), and online only "
                                      f"watch_time events carry seconds; set `means: watch_time`")
                cols[col] = max(cols.get(col, 0.0), float(r.weight))
            # seconds weigh a positive only where the fit has them too (a valued rule); a watch
            # task mapped without a value is fitted on 0/1 labels of weight 1
            out[t] = TaskTarget(tuple(sorted(cols.items())), watch=any(r.value for _, r in mine))
            continue
        col = columns.get(t)
        if watch and col in (None, "watch_time"):
            out[t] = TaskTarget((("watch_time", 1.0),), watch=True)
        elif col is None and t in TASK_COLUMNS:
            out[t] = TaskTarget(tuple((c, 1.0) for c in TASK_COLUMNS[t]))
        elif (col or t) in LABELS and (col or t) != "watch_time" and not watch:
            out[t] = TaskTarget(((col or t, 1.0),))
        else:
            fit = f"column {col!r}" if col else "no event type"
            raise ConfigError(f"rank.tasks: task {t!r} is labelled by {fit} offline, and the online learner labels a "
                              f"task from the events of its window ({online}): map it in labels.map (an event "
                              f"type → task {t!r}) or leave it out of rank.tasks")
    return out


@dataclass
class RankSamples:
    """Samples in the ranker's terms: dense user/item indices, unscaled dense features, labels.

    users, items: (M,) int64; X: (M, d) float32; recalled: (M,) bool (the item was in its user's
    merged candidates); ts: (M,) int64; labels: {column: (M,) float32} for each of LABELS."""

    users: np.ndarray
    items: np.ndarray
    X: np.ndarray
    recalled: np.ndarray
    ts: np.ndarray
    labels: dict[str, np.ndarray]
    n_dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def targets(self, targets: dict[str, TaskTarget]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{task: (y, weight)} (`task_targets`)."""
        return {t: tgt.of(self.labels) for t, tgt in targets.items()}


def check_samples(frame: Any, what: str = "samples") -> pl.DataFrame:
    """The frame, or a DataError naming the missing columns / bad label values."""
    if not isinstance(frame, pl.DataFrame):
        raise DataError(f"{what} must be a polars DataFrame with columns {', '.join(SAMPLE_COLUMNS)}")
    if "cart" not in frame.columns:  # samples written before the cart label: none was a cart
        frame = frame.with_columns(pl.lit(0, pl.Int8).alias("cart"))
    missing = [c for c in SAMPLE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing columns {missing}; a labelled sample has {', '.join(SAMPLE_COLUMNS)}")
    for c in (c for c in LABELS if c != "watch_time"):  # the 0/1 labels
        bad = frame.filter(~pl.col(c).is_in([0, 1]) | pl.col(c).is_null()).height
        if bad:
            raise DataError(f"{what}: column {c!r} must be 0/1; {bad} rows are not")
    return frame


def rank_samples(funnel: Any, frame: pl.DataFrame, unrecalled: str = "random_pairs",
                 what: str = "samples", uncount: bool = False) -> RankSamples:
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
    labels = {c: sub[c].cast(pl.Float32).to_numpy() for c in LABELS}
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
        base = without_own_pairs(funnel, u, i, uncount)
        merged, fresh = _served_candidates(base, users)
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
            X[recalled, n_rec:] = _match_block(match, users, fresh, u[recalled], i[recalled])
        if (~recalled).any():
            X[~recalled] = feats.random_pairs(u[~recalled], i[~recalled], n_dense, base.stats_.item_log_pop,
                                              base.stats_.user_log_act, match)
            if fresh is not None:
                X[~recalled, n_rec:] = _match_block(match, users, fresh, u[~recalled], i[~recalled])
    out = RankSamples(u, i, X, recalled, ts, labels, dropped)
    if unrecalled == "drop":
        m = out.recalled
        out = RankSamples(u[m], i[m], X[m], recalled[m], ts[m], {k: v[m] for k, v in labels.items()},
                          {**dropped, "unrecalled": int((~m).sum())})
    return out


def stream_history(funnel: Any, users: np.ndarray) -> list[np.ndarray] | None:
    """Per user of `users`: the items consumed since the fit — those the channels' histories
    hold (the learner's count updates add the stream to them; the fullest `history_` of the
    channels is read) beyond the fit-time history (`stats_.history`), plus the fit-time items
    the learner saw consumed again (`stats_.stream_ts`), oldest first by their latest
    consumption there. None when no user has any.

    Serving hands these to the request as its real-time history (`RequestState.history`): the
    channels that are not updated online (EASE, userCF) take them as triggers, and the match
    features read them (`HistoryMatch.current_rows`). A sample recomputed without them sees a
    user whose history is in the stream (every user who arrived after the fit) as a user with
    no history: EASE / userCF recall nothing for it and its match block is empty, which the
    served requests never showed."""
    from funnelrec.recall._common import UserHistory

    hists = [ch.history_ for ch in funnel.channels_.values() if isinstance(getattr(ch, "history_", None), UserHistory)]
    if not hists:
        return None
    seen = max(hists, key=lambda h: h.seen.nnz).seen
    fit = funnel.stats_.history
    when = getattr(funnel.stats_, "stream_ts", None)  # the learner's record of when (FunnelStats)
    out, empty, anything = [], np.zeros(0, np.int64), False
    for u in np.asarray(users, np.int64).tolist():
        if not 0 <= u < seen.shape[0]:
            out.append(empty)
            continue
        row = seen.indices[seen.indptr[u]:seen.indptr[u + 1]].astype(np.int64)
        timed = np.zeros(0, np.int64)
        if when is not None and u < when.shape[0]:
            timed = when.indices[when.indptr[u]:when.indptr[u + 1]].astype(np.int64)
        if u < fit.shape[0]:
            # a fit-time item consumed again in the stream is in the request's history too
            again = np.intersect1d(fit.indices[fit.indptr[u]:fit.indptr[u + 1]], timed)
            row = np.union1d(np.setdiff1d(row, fit.indices[fit.indptr[u]:fit.indptr[u + 1]]),
                             np.intersect1d(row, again))
        if len(timed) and len(row) > 1:
            # oldest first, as a request's history store gives it (the short-term block reads the order)
            ts_of = dict(zip(timed.tolist(), when.data[when.indptr[u]:when.indptr[u + 1]].tolist()))
            row = row[np.argsort([ts_of.get(x, -1) for x in row.tolist()], kind="stable")]
        anything |= len(row) > 0
        out.append(row)
    return out if anything else None


def _served_candidates(funnel: Any, users: np.ndarray) -> tuple[list, list[np.ndarray] | None]:
    """(merged candidates of `users` as a request with its real-time history gets them, that
    history per user or None): `Funnel.candidates` with `stream_history` as the request's
    history (module doc)."""
    from funnelrec.recall.base import RecallContext

    fresh = stream_history(funnel, users)
    ctx = None if fresh is None else RecallContext(extra={"history": fresh})
    return funnel.candidates(users, context=ctx), fresh


def _match_block(match: Any, users: np.ndarray, fresh: list[np.ndarray] | None, u: np.ndarray,
                 i: np.ndarray) -> np.ndarray:
    """The history-match block of pairs (u, i) as serving computes it: over the fit-time history
    plus the user's real-time history `fresh` (per user of the sorted `users`)."""
    if fresh is None or not len(u):
        return match.transform(u, i)
    rows = np.searchsorted(users, u)
    return match.transform(rows, i, *match.current(users, fresh))


def candidate_samples(funnel: Any, positives: pl.DataFrame, shown: pl.DataFrame | None = None,
                      negative_rate: float = 1.0, seed: int = 0, what: str = "samples",
                      uncount: bool = False, top: int | None = None) -> RankSamples:
    """Positives no impression led to (organic: request_id null), in the form the fine ranker was
    fitted on (train/candidate_ranker.py, a label set): for each user of `positives`, the user's
    merged candidates — recall over the histories without the frames' own (user, item) pairs
    (`without_own_pairs`: the history the user had before these consumptions) — labelled with
    the user's positives (a pair's rows as one: each label column their largest, ts their
    first, as the fit counts a pair) and 0 elsewhere; a `negative_rate` share
    of the unlabelled candidates is kept (the fit's `hard_negative_rate`; seeded by `seed`).

    Why: an organic positive has no shown negatives beside it; paired with the served top-k's
    impressions only, "was shown" separates the labels (online/updates.py). Among its own
    user's candidates, as in the fit, the update learns what the ranker is for: the order of
    what recall hands it. Positives no channel recalls are left out (`n_dropped["unrecalled"]`:
    the fit labels recalled candidates only). `shown`: impressions of the same window; their
    items are left out of the negatives (they are labelled as impressions) and their pairs out
    of the histories. `uncount` as in `without_own_pairs`. `top`: only each user's `top`
    candidates by the served ranker's fused score are labelled (positives and negatives alike):
    the order that decides what is shown is the order at the top, where the negatives are hard."""
    positives = check_samples(positives, what)
    ranker = funnel.ranker_
    if ranker is None or not hasattr(ranker, "features_"):
        raise ConfigError("online ranker update: the funnel has no fitted fine ranker (rank: section)")
    if not 0.0 <= negative_rate <= 1.0:
        raise ConfigError(f"candidate negative_rate must be in [0, 1], got {negative_rate!r}")
    ds = funnel.dataset_
    cols = LABELS

    def dense(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return (ds.user_ids.indices(frame["user_id"].cast(pl.Utf8).to_list()),
                ds.item_ids.indices(frame["item_id"].cast(pl.Utf8).to_list()))

    u, i = dense(positives)
    ok = (u >= 0) & (i >= 0)
    dropped = {"unknown_user": int((u < 0).sum()), "unknown_item": int(((u >= 0) & (i < 0)).sum())}
    sub = positives.filter(pl.Series(ok))
    u, i = u[ok], i[ok]
    lab = {c: sub[c].cast(pl.Float32).to_numpy() for c in cols}
    ts = sub["ts"].cast(pl.Int64).to_numpy()
    su, si = (np.empty(0, np.int64),) * 2
    if shown is not None and shown.height:
        su, si = dense(check_samples(shown, what))
        keep = (su >= 0) & (si >= 0)
        su, si = su[keep], si[keep]
    n_dense = len(ranker.features_.mean_)
    empty = RankSamples(np.empty(0, np.int64), np.empty(0, np.int64), np.zeros((0, n_dense), np.float32),
                        np.zeros(0, bool), np.empty(0, np.int64), {c: np.zeros(0, np.float32) for c in cols},
                        {**dropped, "unrecalled": 0})
    if not len(u):
        return empty
    users = np.unique(u)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ConfigError(f"candidate top must be an integer ≥ 1 or None, got {top!r}")
    base = without_own_pairs(funnel, np.r_[u, su], np.r_[i, si], uncount)
    merged, fresh = _served_candidates(base, users)
    if top is not None:  # the served order: the ranker's fused score over the request's candidates
        ranked = base.rank_tasks(merged, users, history=fresh)
        merged = [m.subset(np.sort(np.argsort(-fused, kind="stable")[:top])) for m, (fused, _) in zip(merged, ranked)]
    I = max(ds.n_items, int(max(i.max(initial=0), si.max(initial=0))) + 1)
    pos_key = u.astype(np.int64) * I + i
    # a pair's positive rows as one label, as the fit counts a pair (train/candidate_ranker.py
    # `_label_table`): each label column the largest over them (watch seconds too), ts the first
    pair_keys, inv = np.unique(pos_key, return_inverse=True)
    lab_pair = {}
    for c in cols:
        a = np.zeros(len(pair_keys), np.float32)
        np.maximum.at(a, inv, lab[c])
        lab_pair[c] = a
    ts_pair = np.full(len(pair_keys), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(ts_pair, inv, ts)
    first = dict(zip(pair_keys.tolist(), range(len(pair_keys))))  # (user, item) → its pair's row
    shown_keys = set((su.astype(np.int64) * I + si).tolist())
    user_ts = {}
    for uu, t in zip(u.tolist(), ts.tolist()):
        user_ts[uu] = min(t, user_ts.get(uu, t))
    rng = np.random.default_rng(seed)
    out_u, out_i, out_x, out_ts, out_rows = [], [], [], [], []
    recalled_keys: set[int] = set()
    for uu, m in zip(users.tolist(), merged):
        if not len(m):
            continue
        keys = uu * I + m.items.astype(np.int64)
        is_pos = np.fromiter((k in first for k in keys.tolist()), bool, len(keys))
        is_shown = np.fromiter((k in shown_keys for k in keys.tolist()), bool, len(keys))
        take = is_pos | (~is_shown & (rng.random(len(keys)) < negative_rate))
        if not take.any():
            continue
        recalled_keys.update(keys[is_pos].tolist())
        out_u.append(np.full(int(take.sum()), uu, np.int64))
        out_i.append(m.items[take].astype(np.int64))
        out_x.append(np.asarray(m.features, np.float32)[take])
        out_ts.append(np.full(int(take.sum()), user_ts[uu], np.int64))
        out_rows.append(np.array([first.get(k, -1) for k in keys[take].tolist()], np.int64))
    dropped["unrecalled"] = len(first) - len(recalled_keys)
    if not out_u:
        return RankSamples(empty.users, empty.items, empty.X, empty.recalled, empty.ts, empty.labels, dropped)
    cu, ci = np.concatenate(out_u), np.concatenate(out_i)
    rows = np.concatenate(out_rows)
    match = ranker.features_.match_
    X = np.zeros((len(cu), n_dense), np.float32)
    rec = np.concatenate(out_x)
    X[:, :rec.shape[1]] = rec
    X[:, rec.shape[1]:] = _match_block(match, users, fresh, cu, ci)
    labels = {c: np.where(rows >= 0, lab_pair[c][np.maximum(rows, 0)], 0.0).astype(np.float32) for c in cols}
    t = np.concatenate(out_ts)
    t = np.where(rows >= 0, ts_pair[np.maximum(rows, 0)], t)
    return RankSamples(cu, ci, X, np.ones(len(cu), bool), t, labels, dropped)


def _minus_pairs(m: Any, pairs: Any) -> Any:
    """m with the entries at the nonzeros of `pairs` removed (same shape)."""
    import scipy.sparse as sp

    out = sp.csr_matrix(m - m.multiply(pairs))
    out.eliminate_zeros()
    return out


def without_own_pairs(funnel: Any, users: np.ndarray, items: np.ndarray, uncount: bool = False) -> Any:
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
    pair is the one the request saw for that item.

    `uncount`: the funnel's count features (`stats_`: item popularity, user activity) have
    counted the consumptions too (the learner's `count_popularity`): take each consumed pair
    out of them as well."""
    import copy

    import scipy.sparse as sp

    from funnelrec.recall._common import UserHistory

    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    parts: dict[str, Any] = {}
    drop_cache: dict[int, UserHistory] = {}
    consumed = None  # the pairs some channel's history holds: consumptions the counts have taken in
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
            hit = sp.csr_matrix(h.seen.multiply(pairs))
            if consumed is None:
                consumed = hit
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
    stats = getattr(funnel, "stats_", None)
    if uncount and consumed is not None and consumed.nnz and stats is not None:
        # the count features too (the learner's `count_popularity`): an item's popularity and a
        # user's activity without these consumptions — else a clicked sample item's popularity
        # holds its own click (a label leak; 0 → log 2 for an item nobody had taken before)
        cu, ci = consumed.nonzero()
        pop = np.rint(np.expm1(stats.item_log_pop.astype(np.float64)))  # counts: integers
        act = np.rint(np.expm1(stats.user_log_act.astype(np.float64)))
        ki, ku = ci < len(pop), cu < len(act)
        np.subtract.at(pop, ci[ki], 1.0)
        np.subtract.at(act, cu[ku], 1.0)
        parts["stats"] = dataclasses.replace(stats, item_log_pop=np.log1p(np.maximum(pop, 0.0)).astype(np.float32),
                                             user_log_act=np.log1p(np.maximum(act, 0.0)).astype(np.float32))
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
