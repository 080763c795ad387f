"""The funnel's YAML config: every stage, size and model of the pipeline comes from here.

    recall:
      channels:
        - {name: itemcf, n: 300}
        - {name: hot, n: 100, params: {half_life_days: 30}}
      merge: {total: 500, quotas: {hot: 100}, priority: [itemcf, hot]}
    rank: {model: deepfm, params: {embedding_dim: 16}, tasks: [ctr, like], label_folds: 1}
    prerank: {enabled: false, keep: 300}
    fusion: {weights: {ctr: 1.0, like: 0.5}}
    rerank: {method: cap, column: genres, max_per_category: 4}
    k: 10
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from funnelrec.core.config import from_dict, load_yaml
from funnelrec.core.errors import ConfigError


@dataclass(frozen=True)
class ChannelSpec:
    name: str  # the channel's id in answers and metrics
    type: str = ""  # registry name; defaults to `name`
    n: int = 200  # candidates this channel returns per user
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.type or self.name


@dataclass(frozen=True)
class MergeSpec:
    total: int = 500
    quotas: dict[str, int] = field(default_factory=dict)
    priority: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecallSpec:
    channels: list[ChannelSpec] = field(
        default_factory=lambda: [ChannelSpec("itemcf", n=300), ChannelSpec("hot", n=200)]
    )
    merge: MergeSpec = field(default_factory=MergeSpec)


@dataclass(frozen=True)
class RankSpec:
    """The fine ranker (train/candidate_ranker.py): any RANKERS model over the FID fields of the
    user/item plus the dense recall-source and history-match features."""

    model: str = "lr"  # any RANKERS name: lr, fm, deepfm, dcnv2, mmoe, …
    params: dict[str, Any] = field(default_factory=dict)  # the model's own config
    tasks: list[str] = field(default_factory=lambda: ["ctr"])  # "ctr" (interacted), "like" (label ≥ like_threshold)
    like_threshold: float = 4.0
    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 0.0
    batch_size: int = 1024
    patience: int = 2
    random_negatives: int = 2  # random catalogue items per positive, besides recall negatives
    hard_negative_rate: float = 0.3  # share of the non-positive recall candidates kept as negatives
    user_columns: list[str] = field(default_factory=lambda: ["age_band", "gender", "occupation"])
    item_columns: list[str] = field(default_factory=lambda: ["release_year", "genres"])
    include_ids: bool = True
    match_columns: list[str] = field(default_factory=lambda: ["genres", "directors"])
    ridge_lambda: float = 500.0  # item-to-item ridge match feature; 0 = off
    label_folds: int = 0  # extra label sets carved from train (channels refit on the rest)
    fold_fraction: float = 0.125  # share of each user's train rows a fold uses as labels
    valid_fraction: float = 0.1  # label users held out for early stopping
    seed: int = 2020

    def __post_init__(self) -> None:
        if self.label_folds < 0 or not 0 < self.fold_fraction < 1:
            raise ConfigError("rank: label_folds ≥ 0 and 0 < fold_fraction < 1 required")

    def like_value_column(self, labels: Any) -> str | None:
        """The label column the "like" task thresholds (None when only "ctr" is asked)."""
        if "like" not in self.tasks:
            return None
        if "rating" not in labels.columns:
            raise ConfigError("rank.tasks has 'like' but the interactions have no 'rating' column")
        return "rating"

    def ranker_config(self) -> Any:
        from funnelrec.train.candidate_ranker import CandidateRankerConfig

        return CandidateRankerConfig(
            model=self.model, params=dict(self.params), tasks=tuple(self.tasks), like_threshold=self.like_threshold,
            epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
            patience=self.patience, random_negatives=self.random_negatives,
            hard_negative_rate=self.hard_negative_rate, user_columns=tuple(self.user_columns),
            item_columns=tuple(self.item_columns), include_ids=self.include_ids,
            match_columns=tuple(self.match_columns), ridge_lambda=self.ridge_lambda,
            valid_fraction=self.valid_fraction, seed=self.seed)


@dataclass(frozen=True)
class PrerankSpec:
    """Two-tower pre-ranker distilled from the fine ranker: keeps the top `keep` candidates."""

    enabled: bool = False
    keep: int = 300
    dim: int = 32
    hidden: list[int] = field(default_factory=lambda: [64])
    epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 2048
    seed: int = 2020


@dataclass(frozen=True)
class FusionSpec:
    """fused = Σ_t weight_t · logit_t over the ranker's tasks (absent task → weight 1).
    An experiment overrides them per request with params {"fusion.weights.<task>": w}."""

    weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RerankSpec:
    """Optional diversity re-rank of the fused list before top-K: "none", "cap" (at most
    `max_per_category` items per value of `column` in the top K) or "mmr" (λ·relevance −
    (1−λ)·max genre-Jaccard to the items already picked)."""

    method: str = "none"
    column: str = "genres"
    max_per_category: int = 3
    mmr_lambda: float = 0.7
    window: int = 100  # only the top `window` fused items are re-ranked

    def __post_init__(self) -> None:
        if self.method not in ("none", "cap", "mmr"):
            raise ConfigError(f"rerank.method {self.method!r}; known: none, cap, mmr")
        if self.max_per_category < 1 or not 0 <= self.mmr_lambda <= 1 or self.window < 1:
            raise ConfigError("rerank: max_per_category ≥ 1, 0 ≤ mmr_lambda ≤ 1, window ≥ 1 required")


@dataclass(frozen=True)
class FunnelConfig:
    recall: RecallSpec = field(default_factory=RecallSpec)
    rank: RankSpec = field(default_factory=RankSpec)
    prerank: PrerankSpec = field(default_factory=PrerankSpec)
    fusion: FusionSpec = field(default_factory=FusionSpec)
    rerank: RerankSpec = field(default_factory=RerankSpec)
    k: int = 10
    seed: int = 2020

    def __post_init__(self) -> None:
        names = [c.name for c in self.recall.channels]
        if len(set(names)) != len(names):
            raise ConfigError(f"recall.channels: duplicate channel names in {names}")
        for q in self.recall.merge.quotas:
            if q not in names:
                raise ConfigError(f"recall.merge.quotas: {q!r} is not a configured channel ({', '.join(names)})")
        for p in self.recall.merge.priority:
            if p not in names:
                raise ConfigError(f"recall.merge.priority: {p!r} is not a configured channel ({', '.join(names)})")
        if self.k < 1:
            raise ConfigError("k must be ≥ 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FunnelConfig:
        return from_dict(cls, data, "funnel config")

    @classmethod
    def load(cls, path: str | Path) -> FunnelConfig:
        return cls.from_dict(load_yaml(path))
