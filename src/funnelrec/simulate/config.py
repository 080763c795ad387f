"""The simulation's YAML config: the world, the funnel's default parameters, the experiments
that override them, the traffic and the users' behaviour.

    world: {n_users: 3000, n_items: 1000, n_interactions: 60000, seed: 1}
    funnel:                                   # default pipeline parameters (a FunnelConfig)
      recall: {channels: [{name: hot, n: 300}], merge: {total: 300}}
    experiments:                              # an ExperimentsConfig; variants override funnel params
      layers: [{name: recall, owns: ["recall."]}]
      experiments:
        - name: itemcf_vs_hot
          layer: recall
          buckets: [0, 1000]
          variants:
            - {name: control}
            - {name: itemcf, params: {recall.channels: [{name: itemcf, n: 200}, {name: hot, n: 100}]}}
    experiment: itemcf_vs_hot                 # the experiment the report analyses
    days: 7
    traffic: {users_per_day: 1000}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from funnelrec.core.config import from_dict, load_yaml
from funnelrec.core.errors import ConfigError

__all__ = ["WorldSpec", "TrafficConfig", "BehaviourConfig", "SimConfig", "load_sim_config"]


@dataclass(frozen=True)
class WorldSpec:
    """`load_dataset("synthetic", n_users, n_items, n_interactions, seed, **params)`."""

    n_users: int = 3000
    n_items: int = 1000
    n_interactions: int = 60_000
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # other WorldConfig knobs


@dataclass(frozen=True)
class TrafficConfig:
    """Who arrives each day: `users_per_day` distinct users drawn without replacement with
    probability ∝ (1 + impressions in the log)^`activity_power`; each makes
    `requests_per_user` requests at uniform random times of the day."""

    users_per_day: int = 1000
    requests_per_user: int = 1
    activity_power: float = 1.0

    def __post_init__(self) -> None:
        if self.users_per_day < 1 or self.requests_per_user < 1:
            raise ConfigError("traffic: users_per_day and requests_per_user must be ≥ 1")
        if self.activity_power < 0:
            raise ConfigError(f"traffic.activity_power must be ≥ 0, got {self.activity_power}")


@dataclass(frozen=True)
class BehaviourConfig:
    """How a simulated user reacts to one shown item at 0-based slot `pos`:

        P(click) = true_preference(u, i, t) · bias(pos) · item_fatigue^n_ui · author_fatigue^a_u,author(i)

    bias(pos) = (1 + pos)^(−position_exponent of the world) for position_bias "world", or
    1/log2(pos + 2) for "log2". n_ui: times item i was shown to u before; a: u's impressions of
    the item's author, each decaying with half-life `fatigue_half_life_days`. Like and watch
    time given a click follow the world's truth (`SyntheticWorld.sample_response`).
    """

    position_bias: Literal["world", "log2"] = "world"
    item_fatigue: float = 0.5
    author_fatigue: float = 0.9
    fatigue_half_life_days: float = 3.0

    def __post_init__(self) -> None:
        for name in ("item_fatigue", "author_fatigue"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"behaviour.{name} must be in (0, 1], got {v}")
        if self.fatigue_half_life_days <= 0:
            raise ConfigError("behaviour.fatigue_half_life_days must be > 0")


@dataclass(frozen=True)
class SimConfig:
    """See the module doc. `funnel` holds FunnelConfig keys; the experiments' variant params are
    dotted paths into it (e.g. "recall.channels", "recall.merge.total", "rank.epochs").

    train_ranker: fit each funnel's ranker with the log's last `label_fraction` of clicks as
    labels (else the funnel ranks by merge order). refit_every: refit every funnel on the log's
    clicks plus the simulated ones every that many days (0 = never). pre_days: the CUPED
    covariates pre_clicks / pre_watch_time are each user's totals over the log's last pre_days.
    """

    funnel: dict[str, Any]
    experiments: dict[str, Any]
    experiment: str
    world: WorldSpec = field(default_factory=WorldSpec)
    days: int = 7
    seed: int = 0
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    train_ranker: bool = False
    label_fraction: float = 0.1
    refit_every: int = 0
    pre_days: int = 14
    exposure_window_days: int = 7
    exposure_capacity: int = 2000
    exposure_fp_rate: float = 0.01
    alpha: float = 0.05
    title: str = ""
    # ServiceConfig overrides for every simulated service (e.g. {cache_n: 50, cache_keep: shown})
    service: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ConfigError(f"days must be ≥ 1, got {self.days}")
        if not 0.0 < self.label_fraction < 1.0:
            raise ConfigError(f"label_fraction must be in (0, 1), got {self.label_fraction}")
        if self.refit_every < 0 or self.pre_days < 1 or self.exposure_window_days < 1:
            raise ConfigError("refit_every must be ≥ 0, pre_days and exposure_window_days ≥ 1")
        if not 0.0 < self.alpha < 1.0:  # checked here, not by the report after the whole run
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimConfig:
        """Strict: the `funnel` and `experiments` sections are checked as a FunnelConfig and an
        ExperimentsConfig here, so a typo in them fails before the world is generated."""
        from funnelrec.experiments.config import ExperimentsConfig
        from funnelrec.pipeline.config import FunnelConfig

        cfg = from_dict(cls, data, "simulation config")
        FunnelConfig.from_dict(cfg.funnel, "simulation config", path="funnel")
        from_dict(ExperimentsConfig, cfg.experiments, "simulation config", path="experiments")
        from funnelrec.pipeline.service import ServiceConfig

        from_dict(ServiceConfig, dict(cfg.service), "simulation config", path="service")  # a typo fails here
        return cfg

    def replace(self, **changes: Any) -> SimConfig:
        import dataclasses

        return dataclasses.replace(self, **changes)


def load_sim_config(path: str | Path) -> SimConfig:
    return SimConfig.from_dict(load_yaml(path))
