"""Offline engines: where the heavy table jobs of a fit run.

A recall channel's fitted state is mostly *tables* — itemCF/Swing neighbour lists, userCF's
capped item → user sample and item weights, hot's per-item counts, fresh's ranked list. The
default engine ("inprocess") computes them inside `channel.fit` with numba kernels on one box.
The "spark" engine (engines/spark.py) runs the same jobs as Apache Spark DataFrame jobs that read
the interactions from Parquet and write each table to Parquet, the way platform teams run
co-occurrence jobs on a cluster; engines/tables.py then builds the channel's fitted state from
those Parquet tables. The fitted channel is the same object with the same attributes as one
fitted in-process, so the funnel, its artifact and serving have one code path whatever the engine.

    engine: {name: spark, master: "local[2]", shuffle_partitions: 8}     # in the funnel YAML

Channels whose kind (or mode) the engine has no job for are fitted in-process (`SPARK_KINDS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from funnelrec.core.errors import ConfigError

if TYPE_CHECKING:
    from funnelrec.data.dataset import TrainData
    from funnelrec.recall.base import RecallChannel

ENGINES = ("inprocess", "spark")


class EngineUnavailableError(ConfigError):
    """The configured engine cannot start here (no Java, no pyspark): a user-caused, exit-2 error."""


@dataclass(frozen=True)
class EngineSpec:
    """`engine:` of the funnel YAML. `master` is a Spark master URL (local[N], spark://…, yarn);
    `work_dir` keeps the Parquet tables (empty: a temporary folder removed after the fit);
    `conf` passes extra Spark settings (e.g. {"spark.driver.memory": "4g"})."""

    name: str = "inprocess"
    master: str = "local[2]"
    shuffle_partitions: int = 8
    work_dir: str = ""
    conf: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ConfigError(f"engine.name {self.name!r}; known: {', '.join(ENGINES)}")
        if self.shuffle_partitions < 1:
            raise ConfigError(f"engine.shuffle_partitions must be ≥ 1, got {self.shuffle_partitions}")


def fit_channels_on_engine(spec: EngineSpec, channels: dict[str, RecallChannel], data: TrainData,
                           seconds: dict[str, float] | None = None) -> dict[str, RecallChannel]:
    """Fit the unfitted `channels` (name → channel) on `data` with engine `spec`: the channels
    the engine has jobs for from its Parquet tables, the others in-process. Returns them fitted."""
    if spec.name == "inprocess":
        for ch in channels.values():
            ch.fit(data)
        return channels
    from funnelrec.engines.spark import SparkEngine

    with SparkEngine(spec) as engine:
        return engine.fit_channels(channels, data, seconds)
