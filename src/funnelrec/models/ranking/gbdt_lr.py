"""GBDT + LR (He et al. 2014, Facebook): trees learn feature crosses, LR weighs their leaves.

Two stages:
1. `prepare(train)`: LightGBM fits T trees on the training tensors — every "sparse" column
   (embedding row ids) as a categorical feature, every "dense" column as numeric — with the
   binary log-loss. The booster is learned state (saved in the state_dict as extra state).
2. the Trainer fits the LR: logit = Σ_t w[t, leaf_t(x)] + linear(x) (+ b), the leaf index of
   each tree one-hot (an embedding row per (tree, leaf)); `include_raw` keeps the raw-feature
   LR term beside the leaves.
forward runs `booster.predict(pred_leaf=True)` on the batch (CPU numpy) — an inference-time
cost of T tree walks per sample.

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=10, n_fields=2)
    >>> m = GBDTLR(spec, GBDTLRConfig(n_trees=3, num_leaves=4, min_data_in_leaf=1))
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randint(1, 10, (200, 2), generator=g)
    >>> m.prepare({"sparse": x, "label": (x[:, 0] > 5).float()})
    >>> m({"sparse": x[:4]})["ctr"].shape
    torch.Size([4])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from funnelrec.core.errors import DataError, NotFittedError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.nn.embedding import LinearTerm


@dataclass(frozen=True)
class GBDTLRConfig:
    n_trees: int = 100
    num_leaves: int = 31
    learning_rate: float = 0.1
    min_data_in_leaf: int = 20
    include_raw: bool = True
    seed: int = 2020
    num_threads: int = 1  # LightGBM threads; >1 spin-waits badly on a shared 2-core machine


def _features(batch: dict[str, torch.Tensor]) -> np.ndarray:
    x = batch["sparse"].numpy().astype(np.float64)
    if "dense" in batch:
        x = np.concatenate([x, batch["dense"].numpy().astype(np.float64)], axis=1)
    return x


@RANKERS.register("gbdt_lr")
class GBDTLR(RankingModel):
    Config = GBDTLRConfig

    def __init__(self, spec: FeatureSpec, config: GBDTLRConfig | None = None) -> None:
        super().__init__(spec)
        self.config = cfg = config or GBDTLRConfig()
        self.leaves = nn.Embedding(cfg.n_trees * cfg.num_leaves + 1, 1, padding_idx=0)
        nn.init.zeros_(self.leaves.weight)
        self.linear = LinearTerm(spec.n_embeddings, spec.n_dense)
        self.booster_ = None

    def prepare(self, train: dict[str, torch.Tensor]) -> None:
        """Stage 1: fit the trees on the training tensors (needs "label")."""
        import lightgbm as lgb

        if "label" not in train:
            raise DataError("gbdt_lr.prepare needs the training 'label'")
        cfg = self.config
        x = _features(train)
        params = {"objective": "binary", "num_leaves": cfg.num_leaves, "learning_rate": cfg.learning_rate,
                  "min_data_in_leaf": cfg.min_data_in_leaf, "seed": cfg.seed, "deterministic": True,
                  "num_threads": cfg.num_threads, "verbose": -1, "max_cat_to_onehot": 4, "cat_smooth": 10}
        data = lgb.Dataset(x, label=train["label"].numpy(), categorical_feature=list(range(self.spec.n_fields)),
                           free_raw_data=True)
        self.booster_ = lgb.train(params, data, num_boost_round=cfg.n_trees)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.booster_ is None:
            raise NotFittedError("gbdt_lr: call prepare(train) before training or scoring")
        leaf = self.booster_.predict(_features(batch), pred_leaf=True, num_threads=self.config.num_threads).astype(np.int64).reshape(len(batch["sparse"]), -1)
        offs = np.arange(leaf.shape[1]) * self.config.num_leaves + 1
        rows = torch.from_numpy(leaf + offs)
        logit = self.leaves(rows).sum(dim=(1, 2))
        if self.config.include_raw:
            logit = logit + self.linear(batch["sparse"], batch.get("dense"))
        else:
            logit = logit + self.linear.bias
        return {"ctr": logit}

    def get_extra_state(self) -> dict:
        return {"booster": None if self.booster_ is None else self.booster_.model_to_string()}

    def set_extra_state(self, state: dict) -> None:
        import lightgbm as lgb

        s = state.get("booster") if isinstance(state, dict) else None
        self.booster_ = None if s is None else lgb.Booster(model_str=s)


