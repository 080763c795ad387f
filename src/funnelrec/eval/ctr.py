"""CTR evaluation — the RecBole 1.2.1 CTR protocol on a dataset with ratings.

Protocol (same as /work/shared/peers recbole_run.py --task ctr):
- label = rating ≥ 4; features: user age, gender, occupation; item release_year, genres
  (multi-hot: first `multi_width` genres); plus user_id and item_id (FIDs, one shared table);
- global random split 0.8/0.1/0.1 (`random_split_global`, seeded);
- Adam lr 1e-3, batch 2048, ≤ 20 epochs, early stopping on validation AUC (patience 3), the
  best validation epoch's weights scored on the test split: AUC, GAUC (per user), logloss.

A per-model config (configs/ctr/<model>.yaml, or the `config` argument) may override
`features` (FeatureEncoderConfig: count features, out-of-fold target encodings and
neighbourhood-CF estimates, all computed on TRAIN only — docs/BENCHMARKS.md), `model` (the
model's dataclass config) and `trainer` (TrainerConfig); `wide_optimizer` sets FTRL for the wide
part of Wide&Deep. Unknown keys are errors.

Multi-task protocol (`evaluate_ctr(…, tasks=("ctr", "like"))`, `evaluate_ctr_multitask`; CLI
`funnelrec evaluate ctr --model mmoe --tasks ctr,like --json`): the same split, features
(configs/ctr/<model>.yaml), trainer and early stopping, with one label per task:
- "ctr"  = rating ≥ 4 (the single-task label), "like" = rating = 5; like ⇒ ctr, the nesting of
  click/like, so ESMM's like output is pCTCVR = pCTR · pCVR with pCVR = P(rating = 5 | rating ≥ 4);
- scenario/domain = a users-table column, by default the user's gender (2 domains, batch key
  "domain" for STAR/PEPNet; models without domain parts ignore it);
- a model with one logit per task (`RankingModel.multi_task`: MMoE, PLE, ESMM, PEPNet) trains
  all tasks at once with Σ_t BCE_t (weights 1) and stops early on the mean valid AUC over the
  tasks; any other model (DeepFM, DCNv2, STAR …) trains one model per task, each stopping on its
  own valid AUC — for "ctr" that is exactly the single-task protocol (same seed, same result);
- reported per task: test AUC, GAUC (per user), logloss, ECE, AUC within each domain.

Every report carries the test split's ECE (eval/calibration.py: 10 equal-width bins); with
`plot_dir` (CLI `--plot DIR`) the test split's ROC curve and reliability diagram are written
there as PNGs, `<model>[_<task>]_roc.png` and `…_reliability.png` (their paths under "plots").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from funnelrec.core.config import from_dict, load_yaml
from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import RANKERS
from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.splits import random_split_global
from funnelrec.eval.calibration import expected_calibration_error, write_ctr_plots
from funnelrec.eval.metrics import auc, gauc, logloss
from funnelrec.features.encoder import FeatureEncoder, FeatureEncoderConfig
from funnelrec.models.ranking.common import build_ranker, load_all
from funnelrec.train.ftrl import FTRL
from funnelrec.train.losses import bce_loss, multitask_bce
from funnelrec.train.trainer import Trainer, TrainerConfig, setup_torch

RECBOLE_FEATURES = {"user_columns": ["age", "gender", "occupation"], "item_columns": ["release_year", "genres"],
                    "label_column": "rating", "label_threshold": 4.0}
LIKE_RATING = 5.0  # task "like": rating = 5 (ml-100k's top rating)
TASK_LABELS = {"ctr": "rating ≥ 4", "like": "rating = 5"}


@dataclass(frozen=True)
class FTRLConfig:
    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 0.0


@dataclass(frozen=True)
class CTRConfig:
    features: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    wide_optimizer: FTRLConfig | None = None
    eval_batch_size: int = 8192


def config_dir() -> Path:
    """configs/ctr, shipped inside the package (src/funnelrec/configs; the repo's configs/ links there)."""
    return Path(__file__).resolve().parents[1] / "configs" / "ctr"


def load_ctr_config(model: str) -> dict[str, Any]:
    """configs/ctr/<model>.yaml if present, else {} (protocol defaults)."""
    p = config_dir() / f"{model}.yaml"
    return load_yaml(p) if p.exists() else {}


def parse_ctr_config(model: str, raw: dict[str, Any]) -> CTRConfig:
    """The strict CTRConfig of `model`, its sections checked too before any data is read:
    `features` against FeatureEncoderConfig, `trainer` against TrainerConfig, `model` against
    the ranker's own config, each error naming its key path ("ctr config of deepfm: model.…")."""
    where = f"ctr config of {model}"
    cfg = from_dict(CTRConfig, raw, where)
    from_dict(FeatureEncoderConfig, {**RECBOLE_FEATURES, **cfg.features}, where, path="features")
    from_dict(TrainerConfig, cfg.trainer, where, path="trainer")
    load_all()
    cfg_cls = getattr(RANKERS.get(model), "Config", None)
    if cfg_cls is not None:
        from_dict(cfg_cls, cfg.model, where, path="model")
    return cfg


@torch.inference_mode()
def predict(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: str = "ctr",
            batch_size: int = 8192) -> np.ndarray:
    """(N,) float64 probabilities σ(logit), scored in slices of `batch_size`."""
    model.eval()
    n = len(batch["sparse"])
    out = [torch.sigmoid(model({k: v[s : s + batch_size] for k, v in batch.items()})[task])
           for s in range(0, n, batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def task_labels(interactions: pl.DataFrame, tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """{task: (N,) float32 0/1 labels} from the rating column: "ctr" = rating ≥ 4,
    "like" = rating = 5 (so like ⇒ ctr)."""
    unknown = [t for t in tasks if t not in TASK_LABELS]
    if unknown:
        raise ConfigError(f"unknown CTR tasks {unknown}; known: {', '.join(TASK_LABELS)}")
    if "rating" not in interactions.columns:
        raise DataError("the multi-task CTR protocol needs a 'rating' column")
    r = interactions["rating"].cast(pl.Float64).to_numpy()
    if np.isnan(r).any():
        raise DataError(f"{int(np.isnan(r).sum())} NaN ratings")
    rules = {"ctr": r >= RECBOLE_FEATURES["label_threshold"], "like": r == LIKE_RATING}
    return {t: rules[t].astype(np.float32) for t in tasks}


def domain_codes(dataset: Dataset, column: str) -> tuple[np.ndarray, list[str]]:
    """(n_users,) int64 domain id of each user (0..K-1, sorted by value) and the K values."""
    if column not in dataset.users.columns:
        raise DataError(f"domain column {column!r} is not in the users table of {dataset.name!r}")
    values = dataset.users[column].cast(pl.Utf8).fill_null("").to_numpy()
    names, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), [str(n) for n in names]


def _prepare(dataset: Dataset, model: str, config: dict | None, seed: int):
    """Strict config, global split, train-only features: (cfg, split, encoder, tensors, prep s)."""
    raw = load_ctr_config(model) if config is None else config
    cfg = parse_ctr_config(model, raw)
    if "rating" not in dataset.interactions.columns:
        raise DataError(f"dataset {dataset.name!r} has no 'rating' column for the CTR protocol")
    t0 = time.perf_counter()
    split = random_split_global(dataset.interactions, seed=seed)
    feats = from_dict(FeatureEncoderConfig, {**RECBOLE_FEATURES, **cfg.features}, f"ctr config of {model}",
                      path="features")
    enc = FeatureEncoder(feats).fit(TrainData(dataset, split.train))
    tensors = tuple(enc.encode(p) for p in (split.train, split.valid, split.test))
    return cfg, split, enc, tensors, time.perf_counter() - t0


def _trainer_config(cfg: CTRConfig, seed: int) -> TrainerConfig:
    # one thread by default: on a shared 2-core machine two OpenMP threads spin-wait and
    # trained ~18× slower per sample (docs/BENCHMARKS.md); override with trainer.num_threads
    tcfg = from_dict(TrainerConfig, {"seed": seed, "num_threads": 1, **cfg.trainer}, "trainer")
    setup_torch(tcfg.num_threads)
    return tcfg


def _build(model: str, spec, cfg: CTRConfig, tcfg: TrainerConfig, train: dict, seed: int):
    """The seeded model (+ its data-dependent `prepare`) and its optimizer (None: Trainer's)."""
    torch.manual_seed(seed)
    net = build_ranker(model, spec, cfg.model)
    prepare = getattr(net, "prepare", None)
    if callable(prepare):
        prepare(train)
    optimizer = None
    if cfg.wide_optimizer is not None:
        if not hasattr(net, "wide_parameters"):
            raise ConfigError(f"wide_optimizer given but model {model!r} has no wide part")
        w = cfg.wide_optimizer
        deep = [p for p in net.deep_parameters() if p.requires_grad]
        optimizer = [FTRL(net.wide_parameters(), w.alpha, w.beta, w.l1, w.l2),
                     torch.optim.Adam(deep, lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=True)]
    return net, optimizer


def evaluate_ctr(dataset: Dataset, model: str, config: dict | None = None, seed: int = 2020,
                 tasks: Sequence[str] | None = None, domain: str = "gender",
                 plot_dir: str | Path | None = None) -> dict:
    """Train `model` under the CTR protocol and score it on the test split.

    Returns {model, auc, gauc, logloss, ece, train_samples_per_s, epochs, best_epoch, valid_auc,
    train_seconds, n_params, n_train, n_test} (+ "plots": the PNG paths, with `plot_dir`). With
    `tasks` (e.g. ("ctr", "like")) it runs the multi-task protocol instead: see
    `evaluate_ctr_multitask`.
    """
    if tasks is not None:
        return evaluate_ctr_multitask(dataset, model, tasks, config, seed, domain, plot_dir)
    cfg, split, enc, (train, valid, test), prep_s = _prepare(dataset, model, config, seed)
    tcfg = _trainer_config(cfg, seed)
    net, optimizer = _build(model, enc.spec, cfg, tcfg, train, seed)

    y_valid = valid["label"].numpy()

    def validate(m: torch.nn.Module) -> float:
        return auc(y_valid, predict(m, valid, batch_size=cfg.eval_batch_size))

    res = Trainer(tcfg).fit(net, bce_loss(), train, validate=validate, optimizer=optimizer)
    p = predict(net, test, batch_size=cfg.eval_batch_size)
    y = test["label"].numpy()
    out = {
        "model": model,
        "auc": auc(y, p),
        "gauc": gauc(split.test["user_idx"].to_numpy(), y, p),
        "logloss": logloss(y, p),
        "ece": expected_calibration_error(y, p),
        "train_samples_per_s": res.samples_per_s,
        "epochs": res.epochs,
        "best_epoch": res.best_epoch,
        "valid_auc": res.best_score,
        "train_seconds": res.train_seconds,
        "prep_seconds": prep_s,
        "n_params": sum(p.numel() for p in net.parameters()),
        "n_train": len(train["label"]),
        "n_test": len(y),
    }
    if plot_dir is not None:
        out["plots"] = write_ctr_plots(y, p, plot_dir, model, auc=out["auc"])
    return out


def domain_auc(y: np.ndarray, p: np.ndarray, dom: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """{domain name: AUC over that domain's samples}, domains with both classes only."""
    out = {}
    for d, name in enumerate(names):
        sel = dom == d
        if 0 < y[sel].sum() < sel.sum():
            out[name] = auc(y[sel], p[sel])
    return out


def evaluate_ctr_multitask(dataset: Dataset, model: str, tasks: Sequence[str] = ("ctr", "like"),
                           config: dict | None = None, seed: int = 2020, domain: str = "gender",
                           plot_dir: str | Path | None = None) -> dict:
    """Train `model` on several tasks under the multi-task CTR protocol (module docstring).

    Returns {model, protocol, tasks: {task: {auc, gauc, logloss, ece, domain_auc: {domain: auc},
    positive_rate, trained_jointly, epochs, best_epoch, valid_auc, train_samples_per_s,
    train_seconds, n_params}}, domain, domains, prep_seconds, n_train, n_test}; `valid_auc` is
    the early-stopping score (mean valid AUC over the tasks trained together).
    """
    tasks = tuple(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks must be distinct and non-empty, got {list(tasks)}")
    task_labels(dataset.interactions.head(0), tasks)  # unknown tasks fail before the features
    load_all()
    cls = RANKERS.get(model)
    joint = bool(getattr(cls, "multi_task", False))
    cfg, split, enc, parts, prep_s = _prepare(dataset, model, config, seed)
    codes, names = domain_codes(dataset, domain)
    train, valid, test = parts
    for part, t in zip((split.train, split.valid, split.test), parts, strict=True):
        for name, y in task_labels(part, tasks).items():
            t[f"label_{name}"] = torch.from_numpy(y)
        t["domain"] = torch.from_numpy(codes[part["user_idx"].to_numpy()])
    if joint and getattr(cls, "nested_tasks", False):
        nested = len(tasks) == 2 and not bool((train[f"label_{tasks[1]}"] > train[f"label_{tasks[0]}"]).any())
        if not nested:
            raise ConfigError(f"{model} needs two nested tasks (second ⇒ first, e.g. ctr,like), got {list(tasks)}")
    tcfg = _trainer_config(cfg, seed)
    spec = dataclasses.replace(enc.spec, n_domains=len(names))
    user_test = split.test["user_idx"].to_numpy()
    dom_test = test["domain"].numpy()
    out: dict[str, Any] = {}
    for group in [tasks] if joint else [(t,) for t in tasks]:
        if joint:
            heads = {t: t for t in group}
            tr = train
            loss = multitask_bce({t: 1.0 for t in group})
        else:  # a single-task model: its "ctr" head learns this task's label
            heads = {group[0]: "ctr"}
            tr = {**train, "label": train[f"label_{group[0]}"]}
            loss = bce_loss()
        net, optimizer = _build(model, dataclasses.replace(spec, tasks=tuple(heads.values())), cfg, tcfg, tr, seed)

        def validate(m: torch.nn.Module, heads: dict[str, str] = heads) -> float:
            return float(np.mean([auc(valid[f"label_{t}"].numpy(), predict(m, valid, h, cfg.eval_batch_size))
                                  for t, h in heads.items()]))

        res = Trainer(tcfg).fit(net, loss, tr, validate=validate, optimizer=optimizer)
        for t, h in heads.items():
            p = predict(net, test, h, cfg.eval_batch_size)
            y = test[f"label_{t}"].numpy()
            out[t] = {
                "auc": auc(y, p),
                "gauc": gauc(user_test, y, p),
                "logloss": logloss(y, p),
                "ece": expected_calibration_error(y, p),
                "domain_auc": domain_auc(y, p, dom_test, names),
                "positive_rate": float(y.mean()),
                "trained_jointly": joint,
                "epochs": res.epochs,
                "best_epoch": res.best_epoch,
                "valid_auc": res.best_score,
                "train_samples_per_s": res.samples_per_s,
                "train_seconds": res.train_seconds,
                "n_params": sum(q.numel() for q in net.parameters()),
            }
            if plot_dir is not None:
                out[t]["plots"] = write_ctr_plots(y, p, plot_dir, f"{model}_{t}", auc=out[t]["auc"])
    return {
        "model": model,
        "protocol": "ctr-multitask",
        "tasks": out,
        "domain": domain,
        "domains": names,
        "prep_seconds": prep_s,
        "n_train": len(train["label"]),
        "n_test": len(dom_test),
    }
