"""Training the funnel's fine ranker on what recall hands it.

Examples come from one or more `LabelSet`s — a candidate set produced by recall channels fitted
on some history, plus the interactions that followed it (the labels):

- positives: the user's candidates it interacted with in the label period;
- hard negatives: the user's other recall candidates (a `hard_negative_rate` share of them);
- easy negatives: `random_negatives` random catalogue items per positive, not in the history.

The first set is the real one (channels fitted on train, labels = the validation split); extra
sets are label folds carved out of train with the channels refit on the rest (pipeline/funnel.py),
which multiplies the labels without touching the validation or test split. A `valid_fraction`
of the first set's users is held out: the model's NDCG@10 over their full candidate lists drives
early stopping in the one Trainer (tuning sees validation labels only).

Features of a (user, candidate) pair: the recall-source features (features/candidates.py), the
history-match features (`HistoryMatch`: attribute overlap, item-to-item ridge match) — both
standardized and fed as "dense" — and the user/item ids and attributes as FID embedding rows of a
`FeatureEncoder` ("sparse"). The model is any RANKERS name (`build_ranker`): "lr" by default.

What else a model reads (features/behaviour.py, `BehaviourInputs`):
- sequence models (DIN, DIEN, SIM, … any `SequenceRanker`; or any model with `seq_len` > 0): the
  user's behaviour sequence — offline the events the set's channels were fitted on strictly before
  the sample's ts (a negative takes the ts of one of its user's label events, so a sequence's
  length tells nothing about the label), at serving the fit-time history plus the request's
  real-time history — and the target item's id/tag rows for target attention;
- STAR / PEPNet: "domain", the user's value of `domain_column` (no default: all domain 0);
- a model with `prepare(train)` (GBDT+LR: LightGBM leaves as FIDs) has it called on the training
  tensors, "label" = its first task's label, before the Trainer runs.

Tasks are free names, each a label of the label interactions (`task_label`):
- "ctr" = interacted (every label row), unless a column is named for it in `task_columns`;
- any other task t: column `task_columns.get(t, t)` > 0 ("like" falls back to rating ≥
  like_threshold when there is no "like" column) — e.g. a "conversion" column a label map wrote;
- per-task sample weights: `weight_columns[t]` names a column whose value weights t's positives
  (negatives 1); `task_weights[t]` weighs t's loss (default 1);
- a watch-time task (`task_kinds[t] = "watch_time"`): weighted LR (Covington et al. 2016) —
  label = column > 0, positives weighted by the watch time, negatives by 1; at the optimum
  exp(z) = Σ_pos T / N_neg ≈ E[T], so the served value is exp(z) (`predict`); its logit z =
  log E[T] enters the fusion like any task's, so fused = Σ_t w_t·z_t ranks by
  odds(ctr)^w_ctr · E[T]^w_watch — the multiplicative fusion of ctr and watch time;
- a single-task model (DIN, DeepFM …) asked for several tasks is one model per task
  (`PerTaskRanker`); a multi-task model (MMoE, PLE, ESMM, PEPNet) has one logit per task.
Loss: Σ_t λ_t · mean_b w_tb · BCE(σ(z_tb + c), y_tb) (+ a model's own "aux_loss", DIEN's).

Listwise losses (`loss`): the funnel ranks each user's candidates against each other, so
"listwise" trains a softmax over each (label set, user) group of samples — its positives, its
sampled hard negatives and its random negatives alike (set `random_negatives: 0` to leave the
easy ones out) — −Σ_m p_m log softmax(z)_m with p = y·w/Σ y·w (ListNet; with 0/1 labels the mean
over the user's positives of −log softmax(z)_pos), averaged over the groups with a positive;
"lambdarank" a pairwise logistic loss over the group's (positive, negative) pairs weighted by
|ΔNDCG| at the current scores (train/losses.py). `listwise_bce` β > 0 adds β · the pointwise BCE,
which keeps σ(z) a probability for the fusion with other tasks (a softmax fixes z only up to a
constant per user). Batches hold whole groups, not rows: a row-shuffled batch of ~1000 rows holds
about one sample of each of its users (ml-100k: ~150 samples per user and set), so a softmax over
the users present in it would compare nothing. The samples are packed to (groups, L) zero-padded
tensors with a mask (`pack_groups`); the one Trainer shuffles and slices the groups
(~batch_size rows per batch), and the loss flattens the real rows back for the model
(`group_loss`). Validation and serving are the same as for the pointwise loss.

Negative downsampling with calibration (train/calibration.py): `negative_keep_rate` r < 1 keeps
each negative sample (0 in every task) with probability r and trains with the logit offset
c = −log r, so the served logit is that of the full sample population (σ(z) calibrated,
exp(z) of a watch-time task too): odds_sampled = odds / r.

Bagging (`ensemble` N > 1): N members trained one after the other, member k with seed + k for its
validation users, sampled negatives, sequence cuts, init and batch order (member 0 is exactly the
one-member ranker); the model is a `MeanEnsemble`, whose task logits are the members' mean. A
member's early stopping reads ~10 % of the label users, so one fit's test NDCG swings by a few
thousandths with the seed; the mean of N has less of that variance (docs/BENCHMARKS.md, Session 6).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from funnelrec.core.errors import ConfigError, DataError, NotFittedError
from funnelrec.core.persist import record_init
from funnelrec.core.types import PAD, MergedCandidates
from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.eval.metrics import ranking_metrics
from funnelrec.features.behaviour import BehaviourInputs, domain_codes
from funnelrec.features.candidates import HistoryMatch, RankFeatures
from funnelrec.features.spec import FeatureSpec
from funnelrec.models.ranking.common import build_ranker, load_all
from funnelrec.models.ranking.fusion import fuse
from funnelrec.train.calibration import downsampling_offset
from funnelrec.train.trainer import Trainer, TrainerConfig

TASK_KINDS = ("binary", "watch_time")
RANK_LOSSES = ("pointwise", "listwise", "lambdarank")
DEFAULT_SEQ_LEN = 20  # a sequence model's L when rank.seq_len is not given
SCORE_ROWS = 32768  # pairs per forward pass when scoring (`score_tasks`)


@dataclass(frozen=True)
class CandidateRankerConfig:
    """The funnel's fine ranker: any RANKERS model over the FID fields of the user/item plus the
    dense recall-source and history-match features (the YAML `rank:` section is this class)."""

    model: str = "lr"  # any RANKERS name
    params: dict[str, Any] = field(default_factory=dict)  # the model's own config
    tasks: tuple[str, ...] = ("ctr",)
    like_threshold: float = 4.0
    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 2
    random_negatives: int = 2
    hard_negative_rate: float = 0.3
    # the users / items attribute columns learned as FID embeddings and the items columns of the
    # history-match features: none by default (a default naming a dataset's columns fits only
    # that dataset); configs/funnel/ml100k.yaml names MovieLens's, `funnelrec init` a team's own
    user_columns: tuple[str, ...] = ()
    item_columns: tuple[str, ...] = ()
    include_ids: bool = True
    match_columns: tuple[str, ...] = ()
    ridge_lambda: float = 500.0  # 0 = no item-to-item ridge match feature
    # the short-term block (features/candidates.py HistoryMatch): recent_share per match column
    # over the `recent_n` latest consumptions weighted recent_decay^k; 0 = none
    recent_decay: float = 0.0
    recent_n: int = 50
    label_folds: int = 0  # extra label sets carved from train (channels refit on the rest)
    fold_fraction: float = 0.125  # share of each user's train rows a fold uses as labels
    valid_fraction: float = 0.1  # label users held out for early stopping
    seed: int = 2020
    # --- what sequence / multi-domain models read (features/behaviour.py)
    seq_len: int | None = None  # L of the behaviour sequence; None: 20 for a sequence model, else none
    seq_tag_column: str | None = None  # item column whose first value is "seq_cat"; None: the first item column
    sequence_before_ts: bool = True  # training sequences end before each sample's ts (False: whole history)
    domain_column: str | None = None  # users column → "domain" (STAR, PEPNet); None: one domain
    # --- tasks: labels, kinds, weights (see the module doc)
    task_columns: dict[str, str] = field(default_factory=dict)  # task → label column (default: its name)
    task_kinds: dict[str, str] = field(default_factory=dict)  # task → "binary" (default) | "watch_time"
    task_weights: dict[str, float] = field(default_factory=dict)  # task → loss weight λ_t (default 1)
    weight_columns: dict[str, str] = field(default_factory=dict)  # task → column weighting its positives
    negative_keep_rate: float = 1.0  # r: keep each negative with probability r, logit offset −log r
    # bagging: N members trained with seeds seed … seed+N−1 (each its own validation users,
    # sampled negatives and init), served logit = their mean (`MeanEnsemble`)
    ensemble: int = 1
    # "pointwise": BCE per sample (the Loss above); "listwise": softmax cross-entropy over each
    # (label set, user) group of samples; "lambdarank": |ΔNDCG|-weighted pairwise logistic in the
    # group (module doc, "Listwise losses"); listwise_bce: weight of the pointwise BCE added to either
    loss: str = "pointwise"
    listwise_bce: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in RANK_LOSSES:
            raise ConfigError(f"rank.loss {self.loss!r}: must be one of {', '.join(RANK_LOSSES)}")
        if isinstance(self.listwise_bce, bool) or not isinstance(self.listwise_bce, (int, float)) \
                or not self.listwise_bce >= 0:
            raise ConfigError(f"rank.listwise_bce must be a number ≥ 0, got {self.listwise_bce!r}")
        if self.loss != "pointwise" and "watch_time" in self.task_kinds.values():
            raise ConfigError(f"rank.loss {self.loss!r}: a watch-time task needs the pointwise loss "
                              "(its weighted LR is what makes exp(z) the expected watch time)")
        if self.label_folds < 0 or not 0 < self.fold_fraction < 1:
            raise ConfigError("rank: label_folds ≥ 0 and 0 < fold_fraction < 1 required")
        if isinstance(self.recent_decay, bool) or not isinstance(self.recent_decay, (int, float)) \
                or not 0 <= self.recent_decay < 1:
            raise ConfigError(f"rank.recent_decay must be a number in [0, 1) (0 = no short-term block), "
                              f"got {self.recent_decay!r}")
        if isinstance(self.recent_n, bool) or not isinstance(self.recent_n, int) or self.recent_n < 1:
            raise ConfigError(f"rank.recent_n must be an integer ≥ 1, got {self.recent_n!r}")
        if self.recent_decay > 0 and not self.match_columns:
            raise ConfigError("rank.recent_decay > 0 needs rank.match_columns: the short-term block is a share per "
                              "match column")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks) or not all(isinstance(t, str) and t
                                                                                  for t in self.tasks):
            raise ConfigError(f"rank.tasks {list(self.tasks)}: one or more distinct non-empty task names required")
        for key in ("task_columns", "task_kinds", "task_weights", "weight_columns"):
            extra = [t for t in getattr(self, key) if t not in self.tasks]
            if extra:
                raise ConfigError(f"rank.{key}: {extra} are not in rank.tasks {list(self.tasks)}")
        bad = {t: k for t, k in self.task_kinds.items() if k not in TASK_KINDS}
        if bad:
            raise ConfigError(f"rank.task_kinds {bad}: each kind must be one of {', '.join(TASK_KINDS)}")
        neg = {t: w for t, w in self.task_weights.items() if not w >= 0}
        if neg:
            raise ConfigError(f"rank.task_weights {neg}: weights must be ≥ 0")
        if not 0 < self.negative_keep_rate <= 1:
            raise ConfigError(f"rank.negative_keep_rate must be in (0, 1], got {self.negative_keep_rate}")
        if self.seq_len is not None and self.seq_len < 0:
            raise ConfigError(f"rank.seq_len must be ≥ 0, got {self.seq_len}")
        if not 0 <= self.hard_negative_rate <= 1 or not 0 < self.valid_fraction < 1:
            raise ConfigError("hard_negative_rate must be in [0, 1] and valid_fraction in (0, 1)")
        if self.random_negatives < 0:
            raise ConfigError(f"random_negatives must be ≥ 0, got {self.random_negatives}")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) or self.ensemble < 1:
            raise ConfigError(f"rank.ensemble must be an integer ≥ 1 (members), got {self.ensemble!r}")

    def like_value_column(self, labels: Any) -> str | None:
        """The label column the "like" task thresholds when the labels have no "like" column of
        their own (None otherwise, or when "like" is not asked)."""
        if "like" not in self.tasks or "like" in self.task_columns or "like" in labels.columns:
            return None
        if "rating" not in labels.columns:
            raise ConfigError("rank.tasks has 'like' but the label interactions have neither a 'like' nor a "
                              "'rating' column (name one in rank.task_columns.like)")
        return "rating"

    def kind(self, task: str) -> str:
        return self.task_kinds.get(task, "binary")

    def task_label(self, task: str, labels: pl.DataFrame) -> tuple[pl.Expr, pl.Expr]:
        """(label 0/1, positive weight) of `task` as expressions over the label interactions;
        ConfigError naming the task and the columns there are when its column is missing."""
        col = self.task_columns.get(task)
        watch = self.kind(task) == "watch_time"
        if col is None and task == "ctr" and not watch:
            y = pl.lit(1.0)
        else:
            col = col or task
            if col not in labels.columns:
                if task == "like" and not watch and "rating" in labels.columns:
                    y = (pl.col("rating").cast(pl.Float64) >= self.like_threshold).cast(pl.Float64)
                    return y, self._weight(task, labels, y)
                raise ConfigError(f"rank.tasks: task {task!r} has no label column {col!r} in the label interactions "
                                  f"(columns: {', '.join(labels.columns)}); set rank.task_columns.{task}")
            v = pl.col(col).cast(pl.Float64).fill_null(0.0)
            y = (v > 0).cast(pl.Float64)
            if watch:
                return y, pl.when(v > 0).then(v).otherwise(1.0)
        return y, self._weight(task, labels, y)

    def _weight(self, task: str, labels: pl.DataFrame, y: pl.Expr) -> pl.Expr:
        wc = self.weight_columns.get(task)
        if wc is None:
            return pl.lit(1.0)
        if wc not in labels.columns:
            raise ConfigError(f"rank.weight_columns.{task}: column {wc!r} is not in the label interactions "
                              f"(columns: {', '.join(labels.columns)})")
        return pl.when(y > 0).then(pl.col(wc).cast(pl.Float64).fill_null(1.0)).otherwise(1.0)


@dataclass
class LabelSet:
    """Candidates of `users` from channels fitted on `history`, labelled by `positives`.

    positives: (U, I) CSR, nonzero = interacted, value = the label value (e.g. rating)."""

    merged: list[MergedCandidates]
    users: np.ndarray
    positives: sp.csr_matrix
    history: sp.csr_matrix
    item_log_pop: np.ndarray
    user_log_act: np.ndarray
    match: HistoryMatch | None = None
    # the label interactions (user_idx, item_idx, timestamp, the task columns) and the interactions
    # the channels were fitted on (the behaviour sequences): None = labels from `positives` alone
    labels: pl.DataFrame | None = None
    events: pl.DataFrame | None = None


class PerTaskRanker(torch.nn.Module):
    """One single-task model per task (DIN, DeepFM … asked for several tasks): model t is
    `build_ranker(name, spec with tasks ("ctr",), params)`, its "ctr" logit the task-t output.
    `prepare(train)` runs each model's own `prepare` on its task's label."""

    def __init__(self, name: str, spec: FeatureSpec, params: dict[str, Any], tasks: tuple[str, ...]) -> None:
        super().__init__()
        one = dataclasses.replace(spec, tasks=("ctr",))
        self.tasks = tuple(tasks)
        self.spec = spec
        self.models = torch.nn.ModuleList([build_ranker(name, one, dict(params)) for _ in self.tasks])
        record_init(self, name, spec, dict(params), self.tasks)

    def prepare(self, train: dict[str, torch.Tensor]) -> None:
        for t, m in zip(self.tasks, self.models, strict=True):
            if callable(getattr(m, "prepare", None)):
                m.prepare({**train, "label": train[f"label_{t}"]})

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        aux = None
        for t, m in zip(self.tasks, self.models, strict=True):
            o = m(batch)
            out[t] = o["ctr"]
            if "aux_loss" in o:
                aux = o["aux_loss"] if aux is None else aux + o["aux_loss"]
        if aux is not None:
            out["aux_loss"] = aux
        return out


def build_task_model(name: str, spec: FeatureSpec, params: dict[str, Any], tasks: tuple[str, ...]) -> torch.nn.Module:
    """The registered model `name` for `tasks`; a single-task model asked for several tasks: one
    per task (`PerTaskRanker`)."""
    from funnelrec.core.registry import RANKERS

    if len(tasks) > 1 and not getattr(RANKERS.get(name), "multi_task", False):
        return PerTaskRanker(name, spec, dict(params), tuple(tasks))
    return build_ranker(name, spec, dict(params))


class MeanEnsemble(torch.nn.Module):
    """`n` members, each `build_task_model(name, spec, params, tasks)`, trained apart
    (`rank.ensemble`: bagging over seeds); the output of each task is the members' mean logit
    (their "aux_loss", when they have one, the mean too). `members[k]` is trained as a model of
    its own (its `prepare` included)."""

    def __init__(self, name: str, spec: FeatureSpec, params: dict[str, Any], tasks: tuple[str, ...], n: int) -> None:
        super().__init__()
        if n < 1:
            raise ConfigError(f"MeanEnsemble: need n ≥ 1 members, got {n}")
        self.tasks = tuple(tasks)
        self.spec = spec
        self.members = torch.nn.ModuleList([build_task_model(name, spec, dict(params), self.tasks) for _ in range(n)])
        record_init(self, name, spec, dict(params), self.tasks, n)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = [m(batch) for m in self.members]
        out = {t: torch.stack([o[t] for o in outs]).mean(0) for t in self.tasks}
        aux = [o["aux_loss"] for o in outs if "aux_loss" in o]
        if aux:
            out["aux_loss"] = torch.stack([torch.as_tensor(x) for x in aux]).mean()
        return out


def task_loss(tasks: tuple[str, ...], weights: dict[str, float] | None = None, logit_offset: float = 0.0):
    """The ranker's loss: Σ_t λ_t · mean_b w_tb · BCE(σ(z_tb + c), y_tb) + the model's "aux_loss".
    y_t = batch["label_<t>"], w_t = batch["weight_<t>"] (absent: 1), c = `logit_offset`
    (−log r after downsampling negatives at rate r: the model's own logit stays calibrated)."""
    weights = weights or {}
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def loss_fn(model, b):
        out = model(b)
        total = out.get("aux_loss", 0.0)
        for t in tasks:
            z = out[t] + logit_offset if logit_offset else out[t]
            total = total + float(weights.get(t, 1.0)) * bce(z, b[f"label_{t}"], weight=b.get(f"weight_{t}"))
        return total

    return loss_fn


def pack_groups(tensors: dict[str, torch.Tensor], group: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows (N, …) → groups (G, L, …): group g's rows in their order, zero-padded to the largest
    group L, plus "group_mask" (G, L) True on real rows. `group` (N,): each row's group id."""
    _, gid = np.unique(group, return_inverse=True)
    order = np.argsort(gid, kind="stable")
    counts = np.bincount(gid)
    slot = np.arange(len(gid)) - np.repeat(np.cumsum(counts) - counts, counts)
    g = torch.from_numpy(gid[order])
    j = torch.from_numpy(slot)
    o = torch.from_numpy(order)
    G, L = len(counts), int(counts.max())
    out = {}
    for k, v in tensors.items():
        pad = torch.zeros((G, L, *v.shape[1:]), dtype=v.dtype)
        pad[g, j] = v[o]
        out[k] = pad
    mask = torch.zeros((G, L), dtype=torch.bool)
    mask[g, j] = True
    out["group_mask"] = mask
    return out


def group_loss(tasks: tuple[str, ...], kind: str, weights: dict[str, float] | None = None,
               bce_weight: float = 0.0, logit_offset: float = 0.0):
    """The ranker's loss over a batch of `pack_groups` groups: Σ_t λ_t · (G_t + β · BCE_t) + the
    model's "aux_loss", G_t = `listwise_softmax_loss` (kind "listwise") or `lambdarank_loss`
    ("lambdarank") of task t over each group (mean over the groups with a positive), BCE_t the
    pointwise loss of `task_loss` over the batch's real rows (β = `bce_weight`; the offset c only
    enters there: a softmax does not change under a constant shift)."""
    from funnelrec.train.losses import lambdarank_loss, listwise_softmax_loss

    weights = weights or {}
    per_group = listwise_softmax_loss if kind == "listwise" else lambdarank_loss
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def loss_fn(model, b):
        mask = b["group_mask"]
        rows = {k: v[mask] for k, v in b.items() if k != "group_mask"}
        seg = torch.arange(mask.shape[0]).unsqueeze(1).expand_as(mask)[mask]
        out = model(rows)
        total = out.get("aux_loss", 0.0)
        for t in tasks:
            z, y, w = out[t], rows[f"label_{t}"], rows.get(f"weight_{t}")
            term = per_group(z, y, seg, mask.shape[0], w)
            if bce_weight:
                term = term + bce_weight * bce(z + logit_offset if logit_offset else z, y, weight=w)
            total = total + float(weights.get(t, 1.0)) * term
        return total

    return loss_fn


def _uses_sequence(model: str) -> bool:
    """Does registered ranker `model` read the behaviour sequence (a `SequenceRanker`)?"""
    from funnelrec.core.registry import RANKERS
    from funnelrec.models.ranking.din import SequenceRanker

    cls = RANKERS.get(model)
    return isinstance(cls, type) and (issubclass(cls, SequenceRanker) or bool(getattr(cls, "uses_sequence", False)))


class CandidateRanker:
    """The funnel's fine ranker, scikit-learn-style: fit(...) returns self; state ends in `_`.

    Features come from `RankFeatures` (features/candidates.py) and `BehaviourInputs`
    (features/behaviour.py), samples are built here, the model is any RANKERS name trained by the
    one `Trainer`; scoring is one forward pass per batch."""

    def __init__(self, config: CandidateRankerConfig | None = None) -> None:
        self.config = config or CandidateRankerConfig()
        load_all()
        from funnelrec.core.registry import RANKERS

        RANKERS.get(self.config.model)  # unknown name → UnknownComponentError listing the known

    # ------------------------------------------------------------------ samples
    def _dense(self, s: LabelSet, merged: list[MergedCandidates], users: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.features_.raw(merged, users, s.item_log_pop, s.user_log_act, s.match)

    def _random(self, s: LabelSet, users: np.ndarray, n: int, rng: np.random.Generator):
        """Easy negatives: random (user of `users`, catalogue item) pairs outside history and
        labels; `users` are the set's training users (the validation users left out)."""
        ru = rng.choice(users, size=n)
        ri = rng.integers(0, s.positives.shape[1], size=n)
        seen = np.asarray(s.history[ru, ri]).ravel() + np.asarray(s.positives[ru, ri]).ravel()
        ru, ri = ru[seen == 0], ri[seen == 0]
        return ru, ri, self.features_.random_pairs(ru, ri, self.n_dense_, s.item_log_pop, s.user_log_act, s.match)

    def _label_table(self, s: LabelSet) -> dict[str, np.ndarray] | None:
        """Per distinct label (user, item), sorted by key u·I + i: "key", "ts" (first event) and
        per task "y_<t>" (max over the pair's rows) / "w_<t>" (the max weight over the pair's
        positive rows of t, 1 when it has none); None without label interactions."""
        if s.labels is None:
            return None
        cfg, lab = self.config, s.labels
        I = s.positives.shape[1]
        exprs = []
        for t in cfg.tasks:
            y, w = cfg.task_label(t, lab)
            exprs += [y.alias(f"y_{t}"), w.alias(f"w_{t}")]
        ts = pl.col("timestamp").cast(pl.Int64) if "timestamp" in lab.columns else pl.lit(0, pl.Int64)
        frame = lab.select((pl.col("user_idx").cast(pl.Int64) * I + pl.col("item_idx").cast(pl.Int64)).alias("key"),
                           ts.alias("ts"), *exprs)
        # a weight counts on the task's positive rows only: a positive watch of 0.5 s beside a
        # row with no watch is weight 0.5, not the 1.0 of the row that is not a positive. The
        # largest among them, for a watch-time task too: summing would count a pair's rows where
        # a label map's watch rule has no value (init's `play: {task: watch_time}`: every row 1),
        # which the online learner labels 0/1 (online/samples.py `TaskTarget`)
        aggs = []
        for t in cfg.tasks:
            aggs += [pl.col(f"y_{t}").max(),
                     pl.col(f"w_{t}").filter(pl.col(f"y_{t}") > 0).max().fill_null(1.0).alias(f"w_{t}")]
        agg = frame.group_by("key").agg(pl.col("ts").min(), *aggs).sort("key")
        return {c: agg[c].to_numpy() for c in agg.columns}

    def _labels(self, s: LabelSet, table: dict | None, u: np.ndarray, items: np.ndarray
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """({task: y}, {task: positive weight}, label ts (−1 = not a label pair)) of pairs (u, items)."""
        cfg = self.config
        if table is None:  # labels from the positives CSR alone: ctr = interacted, like = value ≥ threshold
            v = np.asarray(s.positives[u, items]).ravel() if len(u) else np.empty(0)
            y = {}
            for t in cfg.tasks:
                if t not in ("ctr", "like") or t in cfg.task_columns or cfg.kind(t) != "binary":
                    raise ConfigError(f"rank.tasks: task {t!r} needs the label interactions (LabelSet.labels)")
                y[t] = (v != 0).astype(np.float32) if t == "ctr" else (v >= cfg.like_threshold).astype(np.float32)
            return y, {t: np.ones(len(u), np.float32) for t in cfg.tasks}, np.full(len(u), -1, np.int64)
        key = u * s.positives.shape[1] + items
        pos = np.minimum(np.searchsorted(table["key"], key), max(len(table["key"]) - 1, 0))
        hit = (table["key"][pos] == key) if len(table["key"]) else np.zeros(len(u), bool)
        y = {t: np.where(hit, table[f"y_{t}"][pos], 0.0).astype(np.float32) for t in cfg.tasks}
        w = {t: np.where(hit & (y[t] > 0), table[f"w_{t}"][pos], 1.0).astype(np.float32) for t in cfg.tasks}
        return y, w, np.where(hit, table["ts"][pos], -1).astype(np.int64)

    def _sample_ts(self, s: LabelSet, u: np.ndarray, label_ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Each sample's ts for its sequence: a label pair its own (first) event time; any other
        pair the time of a random label event of its user (so negatives and positives see
        sequences cut alike)."""
        ts = label_ts.copy()
        todo = ts < 0
        if not todo.any() or s.labels is None or "timestamp" not in s.labels.columns:
            return ts
        lab = s.labels.select(pl.col("user_idx").cast(pl.Int64), pl.col("timestamp").cast(pl.Int64)).sort("user_idx")
        lu, lt = lab["user_idx"].to_numpy(), lab["timestamp"].to_numpy()
        start, end = np.searchsorted(lu, u[todo]), np.searchsorted(lu, u[todo], side="right")
        n = end - start
        pick = start + np.floor(rng.random(len(n)) * np.maximum(n, 1)).astype(np.int64)
        got = np.where(n > 0, lt[np.minimum(pick, max(len(lt) - 1, 0))] if len(lt) else -1, -1)
        ts[todo] = got
        return ts

    def batch(self, u: np.ndarray, items: np.ndarray, X: np.ndarray, ts: np.ndarray | None = None,
              fresh: list | None = None, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Model input for pairs (u, items) with raw dense features X (M, d) (see `RankFeatures.batch`),
        plus the behaviour/domain block (`BehaviourInputs.inputs`: sequences before `ts`, or the
        whole fit-time history + `fresh` by request row `rows` at serving)."""
        out = self.features_.batch(u, items, X)
        beh = getattr(self, "behaviour_", None)
        if beh is not None:
            for k, v in beh.inputs(self.features_.item_rows_, u, items, ts, fresh, rows).items():
                out[k] = torch.from_numpy(np.ascontiguousarray(v))
        return out

    @property
    def user_rows_(self) -> np.ndarray:
        return self.features_.user_rows_

    @property
    def item_rows_(self) -> np.ndarray:
        return self.features_.item_rows_

    @property
    def match_(self):
        return self.features_.match_

    def _samples(self, sets: list[LabelSet], valid_users: np.ndarray, rng: np.random.Generator,
                 seed: int | None = None):
        """(u, items, X, {task: y}, {task: w}, ts, set) of every label set: positives, a share of
        the hard (recall) negatives, random easy negatives; the validation users of sets[0] are
        left out. ts: each sample's sequence cut (−1: none); set: the label set of each sample.
        `seed` (default rank.seed) seeds the draws apart from `rng` (sequence cuts, downsampling)."""
        cfg = self.config
        seed = cfg.seed if seed is None else seed
        ts_rng = np.random.default_rng(seed + 7919)  # apart from `rng`: the samples stay as they were
        parts = []
        for k, s in enumerate(sets):
            table = self._label_table(s)
            users = s.users if k else np.setdiff1d(s.users, valid_users)
            rows = np.flatnonzero(np.isin(s.users, users))
            u, items, X = self._dense(s, [s.merged[r] for r in rows], s.users[rows])
            self.n_dense_ = X.shape[1]
            y, w, lts = self._labels(s, table, u, items)
            any_pos = np.asarray(s.positives[u, items]).ravel() != 0 if len(u) else np.zeros(0, bool)
            keep = any_pos | (rng.random(len(u)) < cfg.hard_negative_rate)
            u, items, X, lts = u[keep], items[keep], X[keep], lts[keep]
            y = {t: v[keep] for t, v in y.items()}
            w = {t: v[keep] for t, v in w.items()}
            n_rand = cfg.random_negatives * int(any_pos.sum())
            if n_rand:
                ru, ri, Xr = self._random(s, users, n_rand, rng)
                u, items, X = np.r_[u, ru], np.r_[items, ri], np.vstack([X, Xr])
                y = {t: np.r_[v, np.zeros(len(ru), np.float32)] for t, v in y.items()}
                w = {t: np.r_[v, np.ones(len(ru), np.float32)] for t, v in w.items()}
                lts = np.r_[lts, np.full(len(ru), -1, np.int64)]
            ts = self._sample_ts(s, u, lts, ts_rng) if self._seq_len and cfg.sequence_before_ts else \
                np.full(len(u), -1, np.int64)
            parts.append((u, items, X, y, w, ts, np.full(len(u), k, np.int64)))
        u = np.concatenate([p[0] for p in parts])
        items = np.concatenate([p[1] for p in parts])
        X = np.vstack([p[2] for p in parts])
        y = {t: np.concatenate([p[3][t] for p in parts]) for t in cfg.tasks}
        w = {t: np.concatenate([p[4][t] for p in parts]) for t in cfg.tasks}
        ts = np.concatenate([p[5] for p in parts])
        which = np.concatenate([p[6] for p in parts])
        if cfg.negative_keep_rate < 1:  # negative downsampling (calibrated by the loss offset)
            neg = np.all([v == 0 for v in y.values()], axis=0)
            keep = ~neg | (np.random.default_rng(seed + 104729).random(len(u)) < cfg.negative_keep_rate)
            u, items, X, ts, which = u[keep], items[keep], X[keep], ts[keep], which[keep]
            y = {t: v[keep] for t, v in y.items()}
            w = {t: v[keep] for t, v in w.items()}
        return u, items, X, y, w, ts, which

    # ------------------------------------------------------------------ the behaviour block
    def _fit_behaviour(self, dataset: Dataset, train: pl.DataFrame) -> None:
        """`behaviour_` (None when the model needs neither a sequence nor a domain) and
        `_seq_len`, from the config, the model and the item-row layout of `features_`."""
        cfg = self.config
        L = cfg.seq_len if cfg.seq_len is not None else (DEFAULT_SEQ_LEN if _uses_sequence(cfg.model) else 0)
        self._seq_len = L
        domains, n_domains = None, 1
        if cfg.domain_column is not None:
            domains, names = domain_codes(dataset.users, cfg.domain_column)
            n_domains = len(names) + 1
            self.domain_names_ = ("",) + tuple(names)  # id 0: no value / unknown user
        if not L and domains is None:
            self.behaviour_ = None
            return
        F_u = self.features_.user_rows_.shape[1]
        names = list(self.features_.spec_.field_names[F_u:F_u + self.features_.item_rows_.shape[1]])
        id_col = names.index("item_id") if "item_id" in names else None
        tag = cfg.seq_tag_column or next((c for c in cfg.item_columns if c in names), None)
        if cfg.seq_tag_column is not None and tag not in names:
            raise ConfigError(f"rank.seq_tag_column {tag!r} must be one of rank.item_columns {list(cfg.item_columns)}")
        tag_col = names.index(tag) if tag is not None and L else None
        self.behaviour_ = BehaviourInputs(L, id_col, tag_col, domains, n_domains)
        if L:
            self.behaviour_.fit(train["user_idx"].to_numpy(), train["item_idx"].to_numpy(),
                                _event_ts(train), dataset.n_users)

    # ------------------------------------------------------------------ fit
    def fit(self, dataset: Dataset, train: pl.DataFrame, sets: list[LabelSet],
            progress: bool = False) -> CandidateRanker:
        """Train on the label sets (sets[0] = the real one; its users give the validation slice)."""
        cfg = self.config
        if not sets:
            raise DataError("ranker training: no label set")
        want = (tuple(cfg.match_columns), cfg.ridge_lambda, cfg.recent_decay, cfg.recent_n)
        for s in sets:
            m = s.match  # a label set caches its match features; another config's are rebuilt
            if m is None or (tuple(m.columns), m.ridge_lambda, getattr(m, "recent_decay", 0.0),
                             getattr(m, "recent_n", 50)) != want:
                events = None if s.events is None else (s.events["user_idx"].to_numpy(), s.events["item_idx"].to_numpy(),
                                                        _event_ts(s.events))
                s.match = HistoryMatch(cfg.match_columns, cfg.ridge_lambda, recent_decay=cfg.recent_decay,
                                       recent_n=cfg.recent_n).fit(s.history, dataset.items, events)
        self.features_ = RankFeatures(cfg.user_columns, cfg.item_columns, cfg.include_ids).fit(
            TrainData(dataset, train), sets[0].match)
        self._fit_behaviour(dataset, train)
        main = sets[0]
        n_valid = max(1, int(round(len(main.users) * cfg.valid_fraction)))
        self.tasks_ = tuple(cfg.tasks)
        self.kinds_ = {t: cfg.kind(t) for t in cfg.tasks}
        offset = downsampling_offset(cfg.negative_keep_rate) if cfg.negative_keep_rate < 1 else 0.0
        if cfg.loss == "pointwise":
            loss_fn = task_loss(self.tasks_, dict(cfg.task_weights), offset)
        else:
            loss_fn = group_loss(self.tasks_, cfg.loss, dict(cfg.task_weights), cfg.listwise_bce, offset)
        vpos = sp.csr_matrix(main.positives != 0, dtype=np.float32)
        # the dense block's layout: 3 recall-source columns per channel, in this order
        self.channel_names_ = tuple(next((m.channels for m in main.merged), ()))
        results = []
        # member k of the ensemble (k = 0 alone without one): seed + k draws its validation users,
        # samples, init and batch order; the feature scaling and the model spec are member 0's
        for k in range(cfg.ensemble):
            seed = cfg.seed + k
            rng = np.random.default_rng(seed)
            valid_users = np.sort(rng.choice(main.users, size=n_valid, replace=False))
            u, items, X, y, w, ts, which = self._samples(sets, valid_users, rng, seed)
            if k == 0:
                # a head with no positive learns "never", and its logit only adds noise to the fused score
                empty = [t for t in cfg.tasks if y[t].sum() == 0]
                if empty:
                    t = empty[0]
                    raise DataError(f"ranker training: task {t!r} has no positive among the {len(u):,} recall "
                                    f"candidates of its label users (label column "
                                    f"{cfg.task_columns.get(t, t)!r}: its events never fall on a candidate, e.g. all "
                                    "are on items already in the users' training history); drop it from rank.tasks "
                                    "or give it events of other items")
                self.features_.set_scale(X)
            train_t = self.batch(u, items, X)
            if self._seq_len:  # each label set's sequences come from the history its channels were fitted on
                self._sequence_block(train_t, sets, train, u, items, ts, which)
            for t in cfg.tasks:
                train_t[f"label_{t}"] = torch.from_numpy(y[t])
                if not np.all(w[t] == 1):
                    train_t[f"weight_{t}"] = torch.from_numpy(w[t])
            if k == 0:
                es = self.features_.spec_
                beh = self.behaviour_
                self.spec_ = FeatureSpec(n_embeddings=es.n_embeddings, n_fields=es.n_fields, n_dense=self.n_dense_,
                                         seq_len=self._seq_len, n_domains=1 if beh is None else beh.n_domains,
                                         tasks=tuple(cfg.tasks), field_names=es.field_names)
                torch.manual_seed(cfg.seed)
                self.model_ = self._build_model()
                self.valid_users_ = valid_users  # member 0's: the users fit_prerank leaves out
                self.n_examples_ = len(u)
            member = self.model_.members[k] if isinstance(self.model_, MeanEnsemble) else self.model_
            prepare = getattr(member, "prepare", None)
            if callable(prepare):  # a data-dependent first stage (GBDT+LR's trees) on the training tensors
                prepare({**train_t, "label": train_t[f"label_{cfg.tasks[0]}"]})
            batch_size = cfg.batch_size
            if cfg.loss != "pointwise":  # whole (label set, user) groups per batch, ~batch_size rows
                train_t = pack_groups(train_t, which * (int(u.max()) + 1) + u)
                batch_size = max(1, round(cfg.batch_size * train_t["group_mask"].shape[0] / len(u)))

            # validation: NDCG@10 of the held-out users' full candidate lists, ranked by the fused score
            vrows = np.flatnonzero(np.isin(main.users, valid_users))
            vmerged = [main.merged[r] for r in vrows]
            vu, vi, vX = self._dense(main, vmerged, main.users[vrows])
            vb = self.batch(vu, vi, vX)
            vsizes = np.array([len(m) for m in vmerged])

            def validate(model, vu=vu, vb=vb, vmerged=vmerged, vsizes=vsizes, vrows=vrows) -> float:
                if len(vu) == 0:
                    return 0.0
                out = model(vb)
                s = fuse({t: out[t].numpy() for t in self.tasks_})  # equal task weights
                top = _topk_rows(vmerged, np.split(s, np.cumsum(vsizes)[:-1]), 10)
                return ranking_metrics(top, vpos, (10,), rows=main.users[vrows])["ndcg@10"]

            trainer = Trainer(TrainerConfig(epochs=cfg.epochs, batch_size=batch_size, lr=cfg.lr,
                                            weight_decay=cfg.weight_decay, seed=seed, patience=cfg.patience,
                                            progress=progress))
            results.append(trainer.fit(member, loss_fn, train_t, validate=validate))
            if k == 0:  # the baseline the ranker must beat: each channel's own order, same users
                self.channel_valid_ndcg_ = _channel_ndcg(vmerged, self.channel_names_, vpos, main.users[vrows])
            del train_t
        self.train_result_ = results[0]
        self.member_results_ = results  # one TrainResult per member (one without an ensemble)
        self.model_.eval()
        return self

    def weaker_than_a_channel(self) -> tuple[str, float, float] | None:
        """(channel, its validation NDCG@10, the ranker's) when a channel's own order beat the
        ranker (member 0's best epoch) on the ranker's validation users; None otherwise or
        before fit."""
        chans = getattr(self, "channel_valid_ndcg_", None)
        result = getattr(self, "train_result_", None)
        if not chans or result is None or result.best_score is None:
            return None
        name, best = max(chans.items(), key=lambda kv: kv[1])
        return (name, best, float(result.best_score)) if best > result.best_score else None

    def _build_model(self) -> torch.nn.Module:
        return self.model_for(self.spec_)

    def model_for(self, spec: FeatureSpec) -> torch.nn.Module:
        """A fresh model of this ranker's structure over `spec`: the registered model (one per task
        for a single-task model asked for several tasks); with `ensemble` N > 1 a `MeanEnsemble`
        of N of them. Online FID admission rebuilds a wider one (online/updates.py)."""
        cfg = self.config
        if cfg.ensemble > 1:
            return MeanEnsemble(cfg.model, spec, dict(cfg.params), tuple(cfg.tasks), cfg.ensemble)
        return build_task_model(cfg.model, spec, dict(cfg.params), tuple(cfg.tasks))

    def _sequence_block(self, train_t: dict, sets: list[LabelSet], train: pl.DataFrame, u: np.ndarray,
                        items: np.ndarray, ts: np.ndarray, which: np.ndarray) -> None:
        """Replace the sequence keys of samples of label sets whose channels were fitted on other
        events than `train` (the label folds: the rest of train) with sequences of those events,
        and cut every sample's sequence before its ts (−1: the whole history)."""
        beh = self.behaviour_
        cut = np.where(ts >= 0, ts, np.iinfo(np.int64).max)
        for k, s in enumerate(sets):
            m = which == k
            if not m.any():
                continue
            hist = beh
            if k and s.events is not None:
                hist = BehaviourInputs(beh.seq_len, beh.id_col, beh.tag_col, beh.domains, beh.n_domains).fit(
                    s.events["user_idx"].to_numpy(), s.events["item_idx"].to_numpy(), _event_ts(s.events),
                    beh.history_.n_users)
            block = hist.inputs(self.features_.item_rows_, u[m], items[m], cut[m])
            for key in ("seq", "seq_cat", "seq_mask"):
                train_t[key][torch.from_numpy(np.flatnonzero(m))] = torch.from_numpy(block[key])

    # ------------------------------------------------------------------ scoring
    def score_tasks(self, merged: list[MergedCandidates], users: np.ndarray, item_log_pop: np.ndarray,
                    user_log_act: np.ndarray, history: sp.csr_matrix | None = None,
                    fresh: list | None = None) -> list[dict[str, np.ndarray]]:
        """Per user: {task: logits of its candidates} — one forward pass for the whole batch. The
        match features read `history` (by user index; default the fit-time one) plus each
        user's `fresh` items consumed since (`RankFeatures.raw`); so does the behaviour sequence
        (the fit-time history, then `fresh`). A watch-time task's logit is z, log E[T] (`predict`)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("the funnel ranker is not fitted")
        u, items, X = self.features_.raw(merged, np.asarray(users, dtype=np.int64), item_log_pop, user_log_act,
                                         history=history, fresh=fresh)
        sizes = np.cumsum([len(m) for m in merged])[:-1]
        if len(items) == 0:
            return [{t: np.empty(0, np.float32) for t in self.tasks_} for _ in merged]
        rows = np.repeat(np.arange(len(merged), dtype=np.int64), [len(m) for m in merged])
        b = self.batch(u, items, X, fresh=fresh, rows=rows)
        parts: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks_}
        with torch.inference_mode():
            # slices of SCORE_ROWS pairs: offline evaluation scores every user at once (~0.5M pairs on
            # ml-100k), and a multi-expert model's activations over all of them took GiBs
            for s in range(0, len(items), SCORE_ROWS):
                res = self.model_({k: v[s:s + SCORE_ROWS] for k, v in b.items()})
                for t in self.tasks_:
                    parts[t].append(res[t].numpy())
        out = {t: np.concatenate(v) for t, v in parts.items()}
        split = {t: np.split(v, sizes) for t, v in out.items()}
        return [{t: split[t][r] for t in self.tasks_} for r in range(len(merged))]

    def predict(self, task_logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Served values of `score_tasks` logits: σ(z) for a binary task (a calibrated probability
        after negative downsampling: the offset was trained in), exp(z) for a watch-time task (the
        expected watch time per impression, Covington et al. 2016)."""
        kinds = getattr(self, "kinds_", {})
        out = {}
        for t, z in task_logits.items():
            z = np.asarray(z, np.float64)
            out[t] = np.exp(z) if kinds.get(t) == "watch_time" else 1.0 / (1.0 + np.exp(-z))
        return out


def _event_ts(frame: pl.DataFrame) -> np.ndarray:
    """The interactions' timestamps (int64); none: the row order (the loaders sort by time)."""
    if "timestamp" in frame.columns:
        return frame["timestamp"].cast(pl.Int64).to_numpy()
    return np.arange(frame.height, dtype=np.int64)


def _channel_ndcg(merged: list[MergedCandidates], names: tuple[str, ...], positives: sp.csr_matrix,
                  users: np.ndarray, k: int = 10) -> dict[str, float]:
    """NDCG@k of each channel's own order over the merged candidates it recalled (by its recall
    score; the others left out), per user row of `merged` (users[r]'s positives)."""
    if not merged:
        return {name: 0.0 for name in names}
    out = {}
    for c, name in enumerate(names):
        kept = [m.subset(np.isfinite(m.scores[:, c])) for m in merged]
        top = _topk_rows(kept, [m.scores[:, c] for m in kept], k)
        out[name] = float(ranking_metrics(top, positives, (k,), rows=users)[f"ndcg@{k}"])
    return out


def _topk_rows(merged: list[MergedCandidates], scores: list[np.ndarray], k: int) -> np.ndarray:
    top = np.full((len(merged), k), PAD, np.int64)
    for r, (m, s) in enumerate(zip(merged, scores)):
        o = np.argsort(-s, kind="stable")[:k]
        top[r, : len(o)] = m.items[o]
    return top
