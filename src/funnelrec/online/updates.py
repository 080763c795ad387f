"""Incremental model updates of the online learner (issue #10 item 4): the model side.

Each `Updater` turns labelled samples (online/samples.py: impressions joined with later clicks)
into new funnel components and never touches the served ones (a server may share them):

    class Updater(Protocol):
        name: str
        def update(self, funnel, samples, holdout) -> dict[str, object]   # component → new object

- `RankerUpdater` ("ranker"): a copy of the fine ranker (train/candidate_ranker.py) takes
  `epochs` passes over the impression samples (organic positives, request_id null, are left out:
  `RankerUpdateConfig.organic`; organic="candidates" instead labels every positive among its
  own user's candidates, the form the ranker was fitted on — for a log whose positives are
  mostly organic, such as a ratings dataset replayed, where the served top-k holds a few
  percent of them) with the loss it was trained with (Σ_task BCE(logit_t, y_t);
  ctr ← any event, like ← like without a label map: `task_targets`) on the features the served
  ranker sees (online/samples.py). The LR /
  wide parameters (`wide_parameters()` where the model has them, else every `LinearTerm` —
  the whole model for "lr") step with FTRL-Proximal (train/ftrl.py), warm-started so that a zero
  gradient leaves a weight where it is; the deep parameters step with Adam. `FidAdmission` grows
  the vocabulary first; the `AUCGuardrail` (online/guardrail.py) then compares the copy with the
  served ranker on `holdout` (its recalled samples: what the ranker orders when serving) and raises
  GuardrailRefused when it is worse by more than its margin.
- `VectorUpdater` ("channels/<name>"): every `interval` seconds (event time) fine-tunes a copy of
  the two-tower of a vector channel on the recent positives (any event) with the channel's own loss,
  puts them in front of the users' tower histories, re-embeds every item and rebuilds the index.

FTRL warm start. FTRL's weight is a function of its state, w = −(z − sign(z)·λ1)/((β + √n)/α + λ2)
for |z| > λ1; a fresh state (z = n = 0) would reset every trained weight to 0 on the first step.
The state starts at z = −w·((β + √n)/α + λ2) − sign(w)·λ1, which gives back w exactly, with n =
the per-coordinate Σg² of the earlier accepted steps: the ranker carries it (`ftrl_n_`, by
parameter name, saved with it), so a coordinate's step size shrinks as FTRL's does over a stream
instead of restarting at α/β every step; rows added since (FID admission) start at n = 0.
With λ1 > 0 a zero weight's z lies anywhere in [−λ1, λ1], so the weight alone would reset it to 0
and forget how close the coordinate was to turning on: z is carried too (`ftrl_z_`) and read
there. `RankerUpdateConfig.ftrl_carry_n = False` restarts at n = 0 every step (the behaviour before
2026-12-04).

FID admission/eviction (`FidAdmission`). The ranker's FID rows live in `RankFeatures.user_rows_`
(n_users, F_u) / `item_rows_` (n_items, F_i): the FidVocab of the fit holds only FIDs of training
samples, so a user or item without a training event — or added to the catalogue since — has row
0 ("unknown") in its id field, and keeps it however often it is seen. Here, per dense index, the
samples are counted (`FidState`, carried by the ranker so a published version takes its
vocabulary with it and a restarted learner resumes from it): an entity whose id field is row 0
gets its own row once it has `min_count` samples — a freed row if there is one, else a new row
appended to every table of the shared embedding (the tensors whose first dimension is the table
size: the LR weights, the field embeddings). New rows start at zero: the score of an entity does
not move at admission (a zero row and row 0 give the same logit) and then learns from its own
samples. A row admitted online and unseen for `ttl` seconds is evicted: its id field goes back to
row 0, the row is zeroed and freed for the next admission, its count restarts. Rows of the fit's
vocabulary are never evicted (the artifact's refit owns them).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.online.guardrail import AUCGuardrail
from funnelrec.online.samples import (
    LABELS,
    RankSamples,
    TaskTarget,
    candidate_samples,
    check_samples,
    rank_samples,
    task_targets,
)

log = logging.getLogger("funnelrec.online.updates")


class Updater(Protocol):
    name: str

    def update(self, funnel: Any, samples: pl.DataFrame, holdout: pl.DataFrame) -> dict[str, object]: ...


# ------------------------------------------------------------------------------- FTRL warm start
def _carried(old: np.ndarray | None, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, mask): a carried per-coordinate state laid over w's shape; rows of a table grown
    since (or a state of another shape) are not carried (mask False, value 0)."""
    val, mask = torch.zeros_like(w), torch.zeros(w.shape, dtype=torch.bool)
    if old is not None:
        old = np.asarray(old, np.float32)
        if old.ndim == w.ndim >= 1 and old.shape[1:] == tuple(w.shape[1:]):
            rows = min(len(old), len(w))
            val[:rows] = torch.from_numpy(np.ascontiguousarray(old[:rows]))
            mask[:rows] = True
    return val, mask


def warm_ftrl(params: list[torch.nn.Parameter], alpha: float, beta: float, l1: float, l2: float,
              n: list[np.ndarray | None] | None = None, z: list[np.ndarray | None] | None = None):
    """An FTRL optimizer over `params` whose state reproduces their current values (module doc);
    n[k]: the carried Σg² of params[k] (None, or a 0-d parameter: zeros; a table grown since is
    padded with zeros); z[k]: the carried z of params[k], read where the weight is 0 — with λ1 > 0
    such a coordinate's z is anywhere in [−λ1, λ1] and the weight alone does not give it back."""
    from funnelrec.train.ftrl import FTRL

    opt = FTRL(params, alpha=alpha, beta=beta, l1=l1, l2=l2)
    with torch.no_grad():
        for k, p in enumerate(params):
            w = p.detach()
            acc, _ = _carried(None if n is None else n[k], w)
            zw = -w * ((beta + acc.sqrt()) / alpha + l2) - torch.sign(w) * l1
            if z is not None and l1 > 0:
                zc, known = _carried(z[k], w)
                keep = known & (w == 0)  # clamped: a zero weight's z stays in the dead zone
                zw = torch.where(keep, zc.clamp(-l1, l1), zw)
            opt.state[p]["z"] = zw
            opt.state[p]["n"] = acc
    return opt


def split_wide_deep(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(wide, deep) trainable parameters: `wide_parameters()` if the model defines it, else the
    parameters of its `LinearTerm` modules (first-order terms); deep = all the others."""
    from funnelrec.nn.embedding import LinearTerm

    if hasattr(model, "wide_parameters"):
        wide = list(model.wide_parameters())
    else:
        wide = [p for m in model.modules() if isinstance(m, LinearTerm) for p in m.parameters()]
    ids = {id(p) for p in wide}
    deep = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [p for p in wide if p.requires_grad], deep


# ------------------------------------------------------------------------------- FID admission
@dataclass
class FidState:
    """Per dense index of users / items: samples counted, last sample time (−1: never), the row
    admitted online (0: none); `free_rows` evicted rows ready for reuse."""

    user_count: np.ndarray
    user_seen: np.ndarray
    user_row: np.ndarray
    item_count: np.ndarray
    item_seen: np.ndarray
    item_row: np.ndarray
    free_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @classmethod
    def empty(cls, n_users: int, n_items: int) -> FidState:
        z = np.zeros
        return cls(z(n_users, np.int64), np.full(n_users, -1, np.int64), z(n_users, np.int64),
                   z(n_items, np.int64), np.full(n_items, -1, np.int64), z(n_items, np.int64))

    def resized(self, n_users: int, n_items: int) -> FidState:
        """A copy covering n_users / n_items (the catalogue may have grown since)."""
        def grow(a: np.ndarray, n: int, fill: int) -> np.ndarray:
            return np.concatenate([a, np.full(max(n - len(a), 0), fill, np.int64)])[:max(n, len(a))].copy()

        return FidState(grow(self.user_count, n_users, 0), grow(self.user_seen, n_users, -1),
                        grow(self.user_row, n_users, 0), grow(self.item_count, n_items, 0),
                        grow(self.item_seen, n_items, -1), grow(self.item_row, n_items, 0),
                        self.free_rows.copy())


def _id_column(field_names: tuple[str, ...], start: int, stop: int, name: str) -> int | None:
    names = list(field_names[start:stop])
    return names.index(name) if name in names else None


def _table_keys(model: torch.nn.Module, n_rows: int) -> list[str]:
    return [k for k, v in model.state_dict().items() if v.ndim >= 1 and v.shape[0] == n_rows]


def grow_ranker_table(ranker: Any, n_new: int) -> None:
    """Append `n_new` zero rows to the shared embedding table of `ranker`'s model (in place on
    this ranker object, which must be a private copy): the model is rebuilt through the registry
    with the wider spec (`CandidateRanker.model_for`: one per task, an ensemble's members alike)
    and takes the old weights, so a saved artifact rebuilds it the same way."""
    from funnelrec.models.ranking.common import build_ranker

    if n_new <= 0:
        return
    old = ranker.model_
    n_old = ranker.spec_.n_embeddings
    spec = dataclasses.replace(ranker.spec_, n_embeddings=n_old + n_new)
    model_for = getattr(ranker, "model_for", None)
    new = model_for(spec) if callable(model_for) else build_ranker(ranker.config.model, spec, dict(ranker.config.params))
    state = old.state_dict()
    grown = {}
    for k, v in new.state_dict().items():
        o = state[k]
        if o.shape == v.shape:
            grown[k] = o
        elif o.ndim >= 1 and o.shape[0] == n_old and o.shape[1:] == v.shape[1:] and v.shape[0] == n_old + n_new:
            grown[k] = torch.cat([o, torch.zeros((n_new, *o.shape[1:]), dtype=o.dtype)])
        else:
            raise ConfigError(f"online FID admission: cannot grow {k} of model {ranker.config.model!r} "
                              f"({tuple(o.shape)} → {tuple(v.shape)})")
    new.load_state_dict(grown)
    new.train(old.training)
    ranker.model_ = new
    ranker.spec_ = spec
    ranker.features_.spec_ = dataclasses.replace(ranker.features_.spec_, n_embeddings=spec.n_embeddings)


class FidAdmission:
    """Admission by `min_count` samples, eviction after `ttl` seconds unseen (module doc)."""

    def __init__(self, min_count: int = 5, ttl: float | None = None) -> None:
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"fid min_count must be an integer ≥ 1, got {min_count!r}")
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"fid ttl must be > 0 seconds or null, got {ttl!r}")
        self.min_count = min_count
        self.ttl = ttl

    def apply(self, ranker: Any, samples: RankSamples, now: float) -> dict[str, int]:
        """Count `samples`, evict, admit — on `ranker`, a private copy (its rows, model, state).
        Returns {admitted_users, admitted_items, evicted_users, evicted_items, rows}."""
        feats = ranker.features_
        F_u, F_i = feats.user_rows_.shape[1], feats.item_rows_.shape[1]
        names = tuple(feats.spec_.field_names)
        st = getattr(ranker, "fid_state_", None)
        n_u, n_i = feats.user_rows_.shape[0], feats.item_rows_.shape[0]
        st = FidState.empty(n_u, n_i) if st is None else st.resized(n_u, n_i)
        report = {"admitted_users": 0, "admitted_items": 0, "evicted_users": 0, "evicted_items": 0}
        sides = [("user", feats.user_rows_, _id_column(names, 0, F_u, "user_id"), samples.users),
                 ("item", feats.item_rows_, _id_column(names, F_u, F_u + F_i, "item_id"), samples.items)]
        freed: list[np.ndarray] = [st.free_rows]
        for side, rows, col, idx in sides:
            count, seen, row = getattr(st, f"{side}_count"), getattr(st, f"{side}_seen"), getattr(st, f"{side}_row")
            if len(idx):
                np.add.at(count, idx, 1)
                np.maximum.at(seen, idx, samples.ts)
            if col is None:
                continue
            if self.ttl is not None:
                gone = np.flatnonzero((row > 0) & (seen < now - self.ttl))
                if len(gone):
                    freed.append(row[gone].copy())
                    rows[gone, col] = 0
                    row[gone] = 0
                    count[gone] = 0
                    report[f"evicted_{side}s"] = len(gone)
        free = np.concatenate(freed).astype(np.int64)
        if len(free) > len(st.free_rows):  # rows evicted now: their weights restart at zero
            gone = free[len(st.free_rows):]
            model = ranker.model_
            keys = set(_table_keys(model, ranker.spec_.n_embeddings))
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if k in keys:
                        v[torch.from_numpy(gone)] = 0
            for attr in ("ftrl_n_", "ftrl_z_"):  # and FTRL's Σg² and z of those rows (new dicts: the
                acc = getattr(ranker, attr, None)  # served ranker shares the old ones)
                if acc:
                    acc = {k: a.copy() for k, a in acc.items()}
                    setattr(ranker, attr, acc)
                    for k in keys & set(acc):
                        acc[k][gone[gone < len(acc[k])]] = 0
        for side, rows, col, _ in sides:
            if col is None:
                continue
            count, row = getattr(st, f"{side}_count"), getattr(st, f"{side}_row")
            todo = np.flatnonzero((rows[:, col] == 0) & (row == 0) & (count >= self.min_count))
            if not len(todo):
                continue
            reuse = free[: len(todo)]
            free = free[len(reuse):]
            n_new = len(todo) - len(reuse)
            start = ranker.spec_.n_embeddings
            grow_ranker_table(ranker, n_new)
            got = np.concatenate([reuse, np.arange(start, start + n_new, dtype=np.int64)])
            rows[todo, col] = got
            row[todo] = got
            report[f"admitted_{side}s"] = len(todo)
        st.free_rows = free
        ranker.fid_state_ = st
        report["rows"] = int(ranker.spec_.n_embeddings)
        return report


def copy_ranker(ranker: Any) -> Any:
    """A copy of a fitted `CandidateRanker` that an update may change: its own model, FID row
    tables and admission state; the read-only parts (match features, scaling) are shared."""
    new = copy.copy(ranker)
    new.model_ = copy.deepcopy(ranker.model_)
    new.features_ = copy.copy(ranker.features_)
    new.features_.user_rows_ = ranker.features_.user_rows_.copy()
    new.features_.item_rows_ = ranker.features_.item_rows_.copy()
    if getattr(ranker, "fid_state_", None) is not None:
        new.fid_state_ = copy.deepcopy(ranker.fid_state_)
    return new


# ------------------------------------------------------------------------------- the ranker
@dataclass(frozen=True)
class RankerUpdateConfig:
    """`learn.ranker:`. epochs over each batch of samples; Adam `lr` for deep parts; FTRL
    (alpha, beta, l1, l2) for LR/wide parts; `unrecalled` as in online/samples.py; `organic`:
    "drop" (default) trains and judges on impression samples only (request_id not null), "keep"
    trains on every sample as it is, "candidates" labels every positive among its own user's
    candidates (online/samples.py `candidate_samples`: `candidate_negative_rate` of the others
    as negatives, only the served top `candidate_top` when set) and is judged on every candidate
    of the held-out users — judge it by GAUC (`AUCGuardrail(group="user")`); FID admission
    `min_count` (0 = off) and eviction `ttl` seconds (None = never)."""

    epochs: int = 1
    batch_size: int = 256
    lr: float = 1e-3
    ftrl_alpha: float = 0.2  # ml-100k holdout AUC gain: 0.05 → +0.08–0.19, 0.2 → +0.28–0.32 (BENCHMARKS)
    ftrl_beta: float = 1.0
    ftrl_l1: float = 0.0
    ftrl_l2: float = 0.0
    unrecalled: str = "random_pairs"
    organic: str = "drop"  # samples no impression led to (request_id null): "drop", "keep" or "candidates"
    candidate_negative_rate: float = 0.3  # organic="candidates": share of a user's other candidates kept as negatives
    candidate_top: int | None = None  # organic="candidates": label only each user's top N served candidates (None: all)
    min_count: int = 5
    ttl: float | None = None
    seed: int = 2020
    ftrl_carry_n: bool = True  # carry FTRL's per-coordinate Σg² from step to step (module doc)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("learn.ranker: epochs ≥ 1, batch_size ≥ 1 and lr > 0 are required")
        if self.organic not in ("drop", "keep", "candidates"):
            raise ConfigError(f"learn.ranker.organic must be 'drop', 'keep' or 'candidates', got {self.organic!r}")
        if not 0.0 <= self.candidate_negative_rate <= 1.0:
            raise ConfigError(f"learn.ranker.candidate_negative_rate must be in [0, 1], got "
                              f"{self.candidate_negative_rate!r}")
        if self.min_count < 0:
            raise ConfigError(f"learn.ranker.min_count must be ≥ 0 (0 = no admission), got {self.min_count}")


def _positives(frame: pl.DataFrame) -> pl.DataFrame:
    """The samples with a positive label (any of online/samples.py's LABELS > 0: a click, like,
    purchase, cart, or a watch of > 0 s)."""
    return frame.filter(pl.any_horizontal([pl.col(c) > 0 for c in LABELS]))


class RankerUpdater:
    """The fine ranker's incremental update (module doc). `clock()` gives "now" for eviction;
    by default the latest sample time (event time: a replay evicts as the stream did)."""

    name = "ranker"

    def __init__(self, config: RankerUpdateConfig | None = None, guardrail: AUCGuardrail | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.config = config or RankerUpdateConfig()
        self.guardrail = guardrail
        self.clock = clock
        c = self.config
        self.admission = FidAdmission(c.min_count, c.ttl) if c.min_count > 0 else None
        self.uncount = False  # the funnel's count features hold the samples' consumptions (`configure`)
        self.last_report_: dict[str, Any] = {}

    def configure(self, config: Any) -> RankerUpdater:
        """Take the learner's FID settings (`LearnConfig.min_count`, `.ttl_s`; online/learner.py)
        where it has them; returns self."""
        c = self.config
        min_count = getattr(config, "min_count", c.min_count)
        ttl = getattr(config, "ttl_s", c.ttl)
        ttl = None if ttl == 0 else ttl  # LearnConfig's 0 = never evict
        self.config = dataclasses.replace(c, min_count=min_count, ttl=ttl)
        self.admission = FidAdmission(min_count, ttl) if min_count > 0 else None
        self.uncount = bool(getattr(config, "count_popularity", False))
        return self

    def update(self, funnel: Any, samples: pl.DataFrame, holdout: pl.DataFrame) -> dict[str, object]:
        cfg = self.config
        t0 = time.perf_counter()
        served = funnel.ranker_
        if served is None:  # a funnel without a fine ranker: nothing to update
            self.last_report_ = {"samples": 0, "skipped": "the funnel has no ranker"}
            return {}
        n_organic = 0
        samples = check_samples(samples)
        holdout = check_samples(holdout, "holdout")
        if cfg.organic == "drop":
            # the ranker models P(click | shown): its samples are impressions with their labels. An
            # organic positive (found outside the recommendations) has no shown negatives beside
            # it, only the served top-k do: mixed in, "was shown" (high recall scores and ranks)
            # separates the labels and the update learns to push the served top down
            n_organic = int(samples["request_id"].is_null().sum())
            samples = samples.filter(pl.col("request_id").is_not_null())
            holdout = holdout.filter(pl.col("request_id").is_not_null())
        if cfg.organic == "candidates":
            # every positive (clicked impression or organic) among its own user's candidates, the
            # fit's label-set form (online/samples.py:candidate_samples); a shown item nobody
            # clicked is one of those candidates, kept at the same rate as the others (kept
            # always, the served top would be over-represented among the negatives). Seeded by
            # the batch (its newest ts): a restarted learner redoing a step draws the same
            train = candidate_samples(funnel, _positives(samples), None, cfg.candidate_negative_rate,
                                      cfg.seed + int(samples["ts"].max() or 0) % 1_000_003, uncount=self.uncount,
                                      top=cfg.candidate_top)
        else:
            train = rank_samples(funnel, samples, cfg.unrecalled, uncount=self.uncount)
        if len(train) == 0:
            self.last_report_ = {"samples": 0, "dropped": train.n_dropped, "organic_dropped": n_organic}
            return {}
        cand = copy_ranker(served)
        report: dict[str, Any] = {"samples": len(train), "recalled": int(train.recalled.sum()),
                                  "dropped": train.n_dropped, "organic_dropped": n_organic}
        if self.admission is not None:
            now = float(self.clock()) if self.clock is not None else float(train.ts.max())
            report["fid"] = self.admission.apply(cand, train, now)
        targets = task_targets(funnel.config, tuple(cand.tasks_))
        report["loss"] = self.fit_steps(cand, train, targets)
        report["update_seconds"] = time.perf_counter() - t0
        if self.guardrail is not None:
            # judged on what the ranker orders when serving — recalled candidates: an unrecalled
            # click in the random-pair form is told apart by its recall block, not by the model's
            # ranking quality (on ml-100k such rows put the served AUC at 0.05 and a sign-flipped
            # model at 0.95)
            if cfg.organic == "candidates":  # every candidate of the held-out positives' users: the order served
                hold = candidate_samples(funnel, _positives(holdout), None, 1.0, what="holdout", uncount=self.uncount,
                                         top=cfg.candidate_top)
            else:
                hold = rank_samples(funnel, holdout, "drop", what="holdout", uncount=self.uncount)
            report["guardrail"] = self.guardrail.check(served, cand, hold,  # raises GuardrailRefused
                                                       targets.get(self.guardrail.task_of(served)))
        self.last_report_ = report
        log.info("ranker update: %s", report)
        return {"ranker": cand}

    def check(self, funnel: Any) -> None:
        """ConfigError now, when the learner starts, if the served ranker has a task the event
        stream cannot label (online/samples.py `task_targets`) or the guardrail judges a task
        the ranker does not have — not a failed step per batch later."""
        ranker = getattr(funnel, "ranker_", None)
        if ranker is None:
            return
        tasks = tuple(ranker.tasks_)
        task_targets(funnel.config, tasks)
        if self.guardrail is not None and self.guardrail.task_of(ranker) not in tasks:
            raise ConfigError(f"guardrail task {self.guardrail.task!r}: the served ranker's tasks are "
                              f"{', '.join(tasks)}")

    def fit_steps(self, ranker: Any, s: RankSamples, targets: dict[str, TaskTarget] | None = None) -> float:
        """`epochs` passes of minibatch steps on `ranker` (a copy) over the samples, each task
        labelled by `targets` (default: `task_targets` without a label map); mean last-epoch loss."""
        from funnelrec.train.candidate_ranker import task_loss
        from funnelrec.train.trainer import Trainer, TrainerConfig

        cfg = self.config
        tasks = tuple(ranker.tasks_)
        data = ranker.batch(s.users, s.items, s.X)
        for t, (y, w) in s.targets(targets or task_targets(None, tasks)).items():
            data[f"label_{t}"] = torch.from_numpy(y)
            data[f"weight_{t}"] = torch.from_numpy(w)
        # the loss CandidateRanker.fit trains with: per-task weights λ_t, per-sample weights (a
        # purchase's 3, a watch's seconds), the model's aux loss; no logit offset (impressions are
        # not downsampled)
        loss_fn = task_loss(tasks, dict(getattr(getattr(ranker, "config", None), "task_weights", None) or {}))

        wide, deep = split_wide_deep(ranker.model_)
        names = {id(p): name for name, p in ranker.model_.named_parameters()}
        carried = (getattr(ranker, "ftrl_n_", None) or {}) if cfg.ftrl_carry_n else {}
        carried_z = (getattr(ranker, "ftrl_z_", None) or {}) if cfg.ftrl_carry_n else {}
        opts: list[torch.optim.Optimizer] = []
        if wide:
            ftrl = warm_ftrl(wide, cfg.ftrl_alpha, cfg.ftrl_beta, cfg.ftrl_l1, cfg.ftrl_l2,
                             [carried.get(names[id(p)]) for p in wide], [carried_z.get(names[id(p)]) for p in wide])
            opts.append(ftrl)
        if deep:
            opts.append(torch.optim.Adam(deep, lr=cfg.lr))
        res = Trainer(TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                                    num_threads=1)).fit(ranker.model_, loss_fn, data, optimizer=opts)
        ranker.model_.eval()
        if wide:  # FTRL's state after this step (read by the next one if it carries n); a new dict: the
            # served ranker's (shared by copy_ranker) stays as it is
            ranker.ftrl_n_ = {names[id(p)]: ftrl.state[p]["n"].numpy().copy() for p in wide}
            if cfg.ftrl_l1 > 0:  # z only says more than the weight inside the L1 dead zone
                ranker.ftrl_z_ = {names[id(p)]: ftrl.state[p]["z"].numpy().copy() for p in wide}
            elif getattr(ranker, "ftrl_z_", None) is not None:  # a step without L1: an older z is stale
                ranker.ftrl_z_ = None
        return float(res.history[-1]["loss"]) if res.history else float("nan")


# ------------------------------------------------------------------------------- the vector channel
@dataclass(frozen=True)
class VectorUpdateConfig:
    """`learn.vector:`. channel: the vector channel's name; interval: seconds of event time
    between two refreshes (`learn.interval`); epochs over the recent positives; lr / batch_size
    None = the channel's own."""

    channel: str = "vector"
    interval: float = 1800.0
    epochs: int = 2
    lr: float | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if not self.interval >= 0 or self.epochs < 1:
            raise ConfigError("learn.vector: interval ≥ 0 seconds and epochs ≥ 1 are required")


class VectorUpdater:
    """Fine-tunes a copy of a vector channel's two-tower on the samples' positives every `interval`
    seconds and rebuilds its index (module doc). "Now" is `clock()` or the latest sample time;
    the time of the last refresh travels with the channel (`online_updated_at_`)."""

    def __init__(self, config: VectorUpdateConfig | None = None, clock: Callable[[], float] | None = None) -> None:
        self.config = config or VectorUpdateConfig()
        self.clock = clock
        self.name = f"channels/{self.config.channel}"
        self.last_report_: dict[str, Any] = {}

    def configure(self, config: Any) -> VectorUpdater:
        """Take the learner's refresh interval (`LearnConfig.interval_s` or `.interval`, seconds)
        where it has one; returns self."""
        interval = getattr(config, "interval_s", getattr(config, "interval", None))
        if interval is not None:
            self.config = dataclasses.replace(self.config, interval=float(interval))
        return self

    def update(self, funnel: Any, samples: pl.DataFrame, holdout: pl.DataFrame) -> dict[str, object]:
        cfg = self.config
        ch = funnel.channels_.get(cfg.channel)
        if ch is None or not hasattr(ch, "model_") or not hasattr(ch, "index_"):
            raise ConfigError(f"learn.vector.channel {cfg.channel!r}: the funnel has no fitted vector channel of "
                              f"that name; channels: {', '.join(funnel.channels_)}")
        samples = check_samples(samples)
        if samples.height == 0:
            return {}
        now = float(self.clock()) if self.clock is not None else float(samples["ts"].max())
        last = getattr(ch, "online_updated_at_", None)
        if last is not None and now - last < cfg.interval:
            self.last_report_ = {"skipped": f"{now - last:.0f} s since the last refresh < interval {cfg.interval:g}"}
            return {}
        # every consumption, as the channel was fitted on every interaction row and the
        # learner's count updates take them (a like, cart or watch without a click too)
        pos = _positives(samples).sort("ts")
        ds = funnel.dataset_
        u = ds.user_ids.indices(pos["user_id"].cast(pl.Utf8).to_list())
        i = ds.item_ids.indices(pos["item_id"].cast(pl.Utf8).to_list())
        I_fit = ch.features_.item_attrs.shape[0]
        ok = (u >= 0) & (u < ch.features_.hist.shape[0]) & (i >= 0) & (i < I_fit)
        if not ok.any():
            self.last_report_ = {"skipped": "no positive on a user and item the tower knows"}
            return {}
        t0 = time.perf_counter()
        new = fine_tune_vector(ch, u[ok], i[ok], cfg)
        new.online_updated_at_ = now
        self.last_report_ = {"positives": int(ok.sum()), "update_seconds": time.perf_counter() - t0}
        log.info("vector update (%s): %s", cfg.channel, self.last_report_)
        return {self.name: new}


def fine_tune_vector(ch: Any, users: np.ndarray, items: np.ndarray, cfg: VectorUpdateConfig) -> Any:
    """A copy of vector channel `ch` fine-tuned on positives (users[k], items[k]) in time order:
    they go in front of the users' tower histories (newest first, `history_len` kept), the towers
    take `cfg.epochs` passes of the channel's loss over them, every fitted item is re-embedded
    and a new index built (items appended since the fit keep their attribute vectors)."""
    import scipy.sparse as sp

    from funnelrec.core.types import PAD
    from funnelrec.recall.vector import ItemIndex, _item_vectors, _optimizers, _RetrievalObjective
    from funnelrec.train.samplers import ForbiddenPairs, build_sampler
    from funnelrec.train.trainer import Trainer, TrainerConfig

    vc = ch.config
    if cfg.lr is not None:
        vc = dataclasses.replace(vc, lr=cfg.lr)
    model = copy.deepcopy(ch.model_)
    hist = ch.features_.hist.clone()
    L = hist.shape[1]
    for uu in np.unique(users):
        fresh = torch.from_numpy(items[users == uu][::-1].copy())  # newest first
        old = hist[uu][hist[uu] != PAD]
        hist[uu] = torch.cat([fresh, old, torch.full((L,), PAD, dtype=hist.dtype)])[:L]
    feats = dataclasses.replace(ch.features_, hist=hist)
    I = feats.item_attrs.shape[0]
    counts = np.bincount(items, minlength=I).astype(np.float64)
    need_neg = vc.loss != "softmax" or vc.n_negatives > 0
    pos_prob = counts / counts.sum() if (vc.loss == "softmax" and vc.logq_correction) else None
    sampler = None
    if need_neg:
        pos = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(feats.hist.shape[0], I))
        sampler = build_sampler("uniform", I, counts, ForbiddenPairs(I, pos), None, vc.hard_ratio)
    neg_prob = sampler.probabilities() if (sampler is not None and pos_prob is not None) else None
    objective = _RetrievalObjective(vc.loss, feats, pos_prob, neg_prob)
    rng = np.random.default_rng(vc.seed)
    u_t, i_t = torch.from_numpy(users.astype(np.int64)), torch.from_numpy(items.astype(np.int64))

    def tensors(epoch: int) -> dict[str, torch.Tensor]:
        out = {"user": u_t, "item": i_t}
        if sampler is not None:
            out["neg"] = torch.from_numpy(sampler.sample(users, vc.n_negatives, rng))
        return out

    model.train()
    Trainer(TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size or vc.batch_size, lr=vc.lr, seed=vc.seed,
                          num_threads=vc.num_threads)).fit(
        model, objective, tensors(0), on_epoch_start=lambda e: tensors(e) if e > 0 else None,
        optimizer=_optimizers(model, vc))
    model.eval()
    new = copy.copy(ch)
    new.model_ = model
    new.features_ = feats
    vecs = _item_vectors(model, feats)
    if len(ch.item_vectors_) > I:  # catalogue items added since the fit: keep their attribute vectors
        vecs = np.concatenate([vecs, ch.item_vectors_[I:]])
    new.item_vectors_ = vecs
    new.index_ = ItemIndex(ch.index_.factory, vecs.shape[1])
    if vc.index_params:
        new.index_.index.set_params(**vc.index_params)
    new.index_.add(vecs)
    new.user_vectors_ = new._stored_user_vectors()
    return new
