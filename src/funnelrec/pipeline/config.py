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
    data: {interactions: events.parquet, schema: schema.yaml}     # a team's own files (data/source.py)
    labels: {event_column: event_type, map: {purchase: {task: conversion, weight: 3}}}
    rules: [{types: [purchase], ttl_s: 2592000}]                  # filter/rules.py

No default names a dataset's columns: the ranker's attribute columns and the re-rank column are
empty until a config names them (configs/funnel/ml100k.yaml does for MovieLens; `funnelrec init`
writes them for a team's own files), so FunnelConfig() fits any data meeting the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from funnelrec.core.config import from_dict, load_yaml
from funnelrec.core.errors import ConfigError, UnknownComponentError
from funnelrec.data.source import DataSpec, LabelSpec
from funnelrec.engines import EngineSpec
from funnelrec.filter.rules import RuleSpec
from funnelrec.recall.merge import MergeConfig
from funnelrec.train.candidate_ranker import CandidateRankerConfig


@dataclass(frozen=True)
class ChannelSpec:
    name: str  # the channel's id in answers and metrics
    type: str = ""  # registry name; defaults to `name`
    n: int = 200  # candidates this channel returns per user
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.type or self.name


#: The merge section (`recall.merge:`) is the merge's own config (recall/merge.py: total,
#: quotas, priority, and the MERGE_STRATEGIES name), not a copy of it.
MergeSpec = MergeConfig


@dataclass(frozen=True)
class RecallSpec:
    channels: list[ChannelSpec] = field(
        default_factory=lambda: [ChannelSpec("itemcf", n=300), ChannelSpec("hot", n=200)]
    )
    merge: MergeSpec = field(default_factory=MergeSpec)


#: The fine ranker's section (`rank:`) is the ranker's own config, not a copy of it.
RankSpec = CandidateRankerConfig


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
    (1−λ)·max genre-Jaccard to the items already picked). `column` (an items column) is
    required with cap or mmr."""

    method: str = "none"
    column: str = ""
    max_per_category: int = 3
    mmr_lambda: float = 0.7
    window: int = 100  # only the top `window` fused items are re-ranked

    def __post_init__(self) -> None:
        if self.method not in ("none", "cap", "mmr"):
            raise ConfigError(f"rerank.method {self.method!r}; known: none, cap, mmr")
        if self.max_per_category < 1 or not 0 <= self.mmr_lambda <= 1 or self.window < 1:
            raise ConfigError("rerank: max_per_category ≥ 1, 0 ≤ mmr_lambda ≤ 1, window ≥ 1 required")
        if self.method != "none" and not self.column:
            raise ConfigError(f"rerank.column: re-rank method {self.method!r} needs an items column to diversify on")


@dataclass(frozen=True)
class FunnelConfig:
    recall: RecallSpec = field(default_factory=RecallSpec)
    rank: RankSpec = field(default_factory=RankSpec)
    prerank: PrerankSpec = field(default_factory=PrerankSpec)
    fusion: FusionSpec = field(default_factory=FusionSpec)
    rerank: RerankSpec = field(default_factory=RerankSpec)
    k: int = 10
    seed: int = 2020
    engine: EngineSpec = field(default_factory=EngineSpec)  # where the channel tables are computed (engines/)
    data: DataSpec = field(default_factory=DataSpec)  # a team's own files (data/source.py)
    labels: LabelSpec = field(default_factory=LabelSpec)  # event type → task label and weight
    rules: list[RuleSpec] = field(default_factory=list)  # filter/rules.py: e.g. bought → not again

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
        if self.rules:
            from funnelrec.filter.rules import check_rules

            check_rules(self.rules, self.labels.meaning())
        self._name_label_columns()

    def _name_label_columns(self) -> None:
        """A rank task the label map teaches reads the map's columns (data/source.py: label_<t>,
        weight_<t>) unless rank names others; a task whose events carry a `value` is a
        watch-time task."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(self.rank)}
        mapped = [t for t in self.labels.tasks if t in self.rank.tasks]
        if not mapped or "task_columns" not in names:
            return
        over: dict[str, Any] = {"task_columns": {**{t: f"label_{t}" for t in mapped}, **self.rank.task_columns}}
        if "weight_columns" in names:
            over["weight_columns"] = {**{t: f"weight_{t}" for t in mapped}, **self.rank.weight_columns}
        valued = {r.task for r in self.labels.map.values() if r.value}
        if "task_kinds" in names:
            kinds = {t: "watch_time" for t in mapped if t in valued or t == "watch_time"}
            over["task_kinds"] = {**kinds, **self.rank.task_kinds}
        object.__setattr__(self, "rank", dataclasses.replace(self.rank, **over))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "funnel config", *, path: str = "") -> FunnelConfig:
        """Strict (core/config.py); `where`/`path` name a funnel config nested in another one."""
        cfg = from_dict(cls, data, where, path=path)
        cfg.check_params(where, path)
        return cfg

    def check_params(self, where: str = "funnel config", path: str = "") -> None:
        """Validate each channel's and the ranker's `params` against their registered config
        classes, so that a typo fails when the YAML is read, naming its key path
        ("funnel config: rank.params.embedding_dim: …"), not when the funnel is fitted."""
        at = f"{path}." if path else ""
        import funnelrec.recall  # noqa: F401  (registers every channel)
        from funnelrec.core.registry import RANKERS, RECALL_CHANNELS, Registry
        from funnelrec.models.ranking.common import load_all

        def component(registry: Registry, name: str, key: str) -> Any:
            try:
                return registry.get(name)
            except UnknownComponentError as e:
                raise UnknownComponentError(f"{where}: {at}{key}: {e}") from None

        for i, c in enumerate(self.recall.channels):
            key = f"recall.channels[{i}].{'type' if c.type else 'name'}"
            cfg_cls = getattr(component(RECALL_CHANNELS, c.kind, key), "config_class", None)
            if cfg_cls is not None:
                from_dict(cfg_cls, c.params, where, path=f"{at}recall.channels[{i}].params")
        load_all()
        cfg_cls = getattr(component(RANKERS, self.rank.model, "rank.model"), "Config", None)
        if cfg_cls is not None:
            from_dict(cfg_cls, self.rank.params, where, path=f"{at}rank.params")

    @classmethod
    def load(cls, path: str | Path) -> FunnelConfig:
        return cls.from_dict(load_yaml(path))
