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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from funnelrec.core.config import from_dict, load_yaml
from funnelrec.core.errors import ConfigError, DataError
from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.splits import random_split_global
from funnelrec.eval.metrics import auc, gauc, logloss
from funnelrec.features.encoder import FeatureEncoder, FeatureEncoderConfig
from funnelrec.models.ranking.common import build_ranker
from funnelrec.train.ftrl import FTRL
from funnelrec.train.losses import bce_loss
from funnelrec.train.trainer import Trainer, TrainerConfig, setup_torch

RECBOLE_FEATURES = {"user_columns": ["age", "gender", "occupation"], "item_columns": ["release_year", "genres"],
                    "label_column": "rating", "label_threshold": 4.0}


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
    """configs/ctr of the source checkout (src/funnelrec/eval/ctr.py → repo root)."""
    return Path(__file__).resolve().parents[3] / "configs" / "ctr"


def load_ctr_config(model: str) -> dict[str, Any]:
    """configs/ctr/<model>.yaml if present, else {} (protocol defaults)."""
    p = config_dir() / f"{model}.yaml"
    return load_yaml(p) if p.exists() else {}


@torch.inference_mode()
def predict(model: torch.nn.Module, batch: dict[str, torch.Tensor], task: str = "ctr",
            batch_size: int = 8192) -> np.ndarray:
    """(N,) float64 probabilities σ(logit), scored in slices of `batch_size`."""
    model.eval()
    n = len(batch["sparse"])
    out = [torch.sigmoid(model({k: v[s : s + batch_size] for k, v in batch.items()})[task])
           for s in range(0, n, batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def evaluate_ctr(dataset: Dataset, model: str, config: dict | None = None, seed: int = 2020) -> dict:
    """Train `model` under the CTR protocol and score it on the test split.

    Returns {model, auc, gauc, logloss, train_samples_per_s, epochs, best_epoch, valid_auc,
    train_seconds, n_params, n_train, n_test}.
    """
    raw = load_ctr_config(model) if config is None else config
    cfg = from_dict(CTRConfig, raw, f"ctr config of {model}")
    if "rating" not in dataset.interactions.columns:
        raise DataError(f"dataset {dataset.name!r} has no 'rating' column for the CTR protocol")
    t0 = time.perf_counter()
    split = random_split_global(dataset.interactions, seed=seed)
    feats = from_dict(FeatureEncoderConfig, {**RECBOLE_FEATURES, **cfg.features}, "features")
    enc = FeatureEncoder(feats).fit(TrainData(dataset, split.train))
    train, valid, test = (enc.encode(p) for p in (split.train, split.valid, split.test))
    prep_s = time.perf_counter() - t0

    # one thread by default: on a shared 2-core machine two OpenMP threads spin-wait and
    # trained ~18× slower per sample (docs/BENCHMARKS.md); override with trainer.num_threads
    tcfg = from_dict(TrainerConfig, {"seed": seed, "num_threads": 1, **cfg.trainer}, "trainer")
    setup_torch(tcfg.num_threads)
    torch.manual_seed(seed)
    net = build_ranker(model, enc.spec, cfg.model)
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

    y_valid = valid["label"].numpy()

    def validate(m: torch.nn.Module) -> float:
        return auc(y_valid, predict(m, valid, batch_size=cfg.eval_batch_size))

    res = Trainer(tcfg).fit(net, bce_loss(), train, validate=validate, optimizer=optimizer)
    p = predict(net, test, batch_size=cfg.eval_batch_size)
    y = test["label"].numpy()
    return {
        "model": model,
        "auc": auc(y, p),
        "gauc": gauc(split.test["user_idx"].to_numpy(), y, p),
        "logloss": logloss(y, p),
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
