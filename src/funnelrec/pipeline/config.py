"""The funnel's YAML config: every stage, size and model of the pipeline comes from here.

    recall:
      channels:
        - {name: itemcf, n: 300}
        - {name: hot, n: 100, params: {half_life_days: 30}}
      merge: {total: 500, quotas: {hot: 100}, priority: [itemcf, hot]}
    rank: {model: lr, epochs: 10}
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
    model: str = "lr"  # "lr" = the built-in funnel LR; any RANKERS name once wired
    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 4096
    random_negatives: int = 4  # random catalogue items per positive, besides recall negatives
    seed: int = 2020


@dataclass(frozen=True)
class FunnelConfig:
    recall: RecallSpec = field(default_factory=RecallSpec)
    rank: RankSpec = field(default_factory=RankSpec)
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
