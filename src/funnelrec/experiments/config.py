"""Experiment configuration: layers, experiments, variants, ramp-ups, rollouts with holdouts.

A ramp-up is either manual (`ramp: {schedule: [0.01, 0.05], step: 0}`, moved by
`RampUp.advance`) or scheduled by the clock:

    ramp: [{at: "+0", percent: 1}, {at: "+2h", percent: 5}, {at: "2026-12-04T09:00:00Z", percent: 20}]
    guardrail: {metric: ctr, max_degradation: 0.0, alpha: 0.05}

(or the mapping form `ramp: {start: …, steps: […], guardrails: […], on_breach: hold}`);
see `RampStepConfig` and `RampConfig`.

Loaded strictly from YAML (unknown keys are errors) into frozen dataclasses; checks that need
one object only live in `__post_init__`, checks across objects (overlapping bucket ranges,
traffic over 100 %, unknown parameters) in `ExperimentPlatform` (assignment.py).

    >>> cfg = from_dict(ExperimentsConfig, {
    ...     "layers": [{"name": "rank"}],
    ...     "experiments": [{"name": "dcn", "layer": "rank", "traffic": 0.1, "variants": [
    ...         {"name": "control"}, {"name": "dcnv2", "params": {"rank.model": "dcnv2"}}]}]})
    >>> cfg.experiments[0].variants[1].params
    {'rank.model': 'dcnv2'}

Bucket ranges are half-open `[start, end)` over the layer's `n_buckets` buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from funnelrec.core.config import from_dict, load_yaml

__all__ = [
    "VariantConfig",
    "GuardrailConfig",
    "RampStepConfig",
    "RampConfig",
    "ExperimentConfig",
    "LayerConfig",
    "RolloutConfig",
    "ExperimentsConfig",
    "load_experiments_config",
]


def _check_range(r: tuple[int, ...], what: str) -> None:
    if len(r) != 2 or not 0 <= r[0] < r[1]:
        raise ValueError(f"{what} must be [start, end) with 0 <= start < end, got {list(r)}")


@dataclass(frozen=True)
class VariantConfig:
    """One arm. `share` is its weight inside the experiment (default: equal shares);
    `buckets` instead pins it to an absolute layer bucket range [start, end).
    `params` maps dotted pipeline parameter paths to values."""

    name: str
    share: float | None = None
    buckets: tuple[int, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.share is not None and not 0.0 < self.share <= 1.0:
            raise ValueError(f"variant {self.name!r}: share must be in (0, 1], got {self.share}")
        if self.buckets:
            _check_range(self.buckets, f"variant {self.name!r} buckets")
            if self.share is not None:
                raise ValueError(f"variant {self.name!r}: give share or buckets, not both")


@dataclass(frozen=True)
class GuardrailConfig:
    """A metric that must not get worse during a ramp-up.

    Fails when the relative lift moves in the bad direction by more than `max_degradation`
    (a threshold, e.g. 0.02 = 2 %), or when it is significantly bad at level `alpha`
    (a statistical test; p-value from the result handed to `RampUp.advance`). At least one.

    A scheduled ramp (steps with times) reads the metric from the feedback log instead: per
    user, Σ value of the `numerator` events over the count of `denominator` events of the
    experiment's requests (a ratio metric, delta method; "ctr" = click / impression), and it
    trips when the always-valid (mSPRT) 1 − alpha interval of treatment − control lies entirely
    beyond the threshold, i.e. below −max_degradation · control (higher_is_better; alpha
    defaults to 0.05, max_degradation to 0). See `experiments.schedule.guardrail_look`.
    """

    metric: str
    direction: Literal["higher_is_better", "lower_is_better"] = "higher_is_better"
    max_degradation: float | None = None
    alpha: float | None = None
    numerator: str | None = None  # event type summed per user (its value), e.g. "click"
    denominator: str | None = None  # event type counted per user, e.g. "impression"

    def __post_init__(self) -> None:
        if self.max_degradation is None and self.alpha is None:
            raise ValueError(f"guardrail {self.metric!r}: set max_degradation, alpha, or both")
        if self.max_degradation is not None and self.max_degradation < 0:
            raise ValueError(f"guardrail {self.metric!r}: max_degradation must be >= 0")
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise ValueError(f"guardrail {self.metric!r}: alpha must be in (0, 1)")
        if (self.numerator is None) != (self.denominator is None):
            raise ValueError(f"guardrail {self.metric!r}: set both numerator and denominator event types, or neither")

    @property
    def events(self) -> tuple[str, str]:
        """(numerator, denominator) event types of the metric read from the feedback log;
        "ctr" means (click, impression). Other metrics name theirs (see the fields)."""
        if self.numerator is not None:
            return self.numerator, self.denominator  # type: ignore[return-value]
        if self.metric == "ctr":
            return "click", "impression"
        raise ValueError(f"guardrail {self.metric!r}: a scheduled ramp reads it from the feedback log; "
                         "set numerator and denominator event types (e.g. click / impression)")


@dataclass(frozen=True)
class RampStepConfig:
    """One step of a scheduled ramp: from time `at` on, `percent` % of the layer's users are in
    the experiment (split over its variants by their shares). `at` is an ISO-8601 time
    ("2026-12-04T09:00:00Z"; no zone = UTC) or an offset from the ramp's start: "+0", "+90s",
    "+30m", "+2h", "+1d" (a bare number is seconds)."""

    at: str
    percent: float

    def __post_init__(self) -> None:
        if not 0.0 < self.percent <= 100.0:
            raise ValueError(f"ramp step at {self.at!r}: percent must be in (0, 100], got {self.percent}")
        from funnelrec.experiments.schedule import parse_at

        parse_at(self.at)  # a malformed time raises here, naming it


@dataclass(frozen=True)
class RampConfig:
    """Traffic steps as fractions of the layer. Either manual — `schedule` (e.g. 0.01, 0.05, 0.2,
    0.5) with `step` the current one, moved by `RampUp.advance` — or scheduled by the clock —
    `steps` with times, offsets counted from `start` (ISO time; default: when the platform is
    built). A scheduled ramp checks its guardrails on the feedback log every `check_every`
    seconds and before each step; on a breach it rolls back to 0 % (`on_breach: rollback`, for
    good) or holds its step until the test clears (`hold`). `tau` is the mSPRT mixing sd
    relative to the control value. An empty ramp means the experiment runs at full traffic."""

    schedule: tuple[float, ...] = ()
    step: int = 0
    guardrails: tuple[GuardrailConfig, ...] = ()
    steps: tuple[RampStepConfig, ...] = ()
    start: str | None = None
    on_breach: Literal["rollback", "hold"] = "rollback"
    check_every: float = 60.0
    tau: float = 0.05

    def __post_init__(self) -> None:
        if self.steps and self.schedule:
            raise ValueError("ramp: give schedule (manual) or steps (by the clock), not both")
        s = self.fractions
        if any(not 0.0 < x <= 1.0 for x in s):
            raise ValueError(f"ramp schedule values must be in (0, 1], got {list(s)}")
        if any(b <= a for a, b in zip(s, s[1:])):
            raise ValueError(f"ramp schedule must increase strictly, got {list(s)}")
        if s and not 0 <= self.step < len(s):
            raise ValueError(f"ramp step {self.step} is outside the schedule of {len(s)} steps")
        if self.steps and self.step:
            raise ValueError("ramp: step is for a manual schedule; a scheduled ramp's step follows the clock")
        if not s and self.guardrails:
            raise ValueError("ramp guardrails without a schedule")
        if self.start is not None:
            from funnelrec.experiments.schedule import parse_at

            if parse_at(self.start)[0] != "time":
                raise ValueError(f"ramp start must be an ISO time, got {self.start!r}")
        if self.check_every <= 0:
            raise ValueError(f"ramp check_every must be > 0 seconds, got {self.check_every}")
        if self.tau <= 0:
            raise ValueError(f"ramp tau must be > 0, got {self.tau}")
        if self.steps:
            for g in self.guardrails:
                g.events  # noqa: B018 — a metric the log cannot give raises here, naming it

    @property
    def fractions(self) -> tuple[float, ...]:
        """The traffic of each step as a fraction of the layer."""
        return tuple(st.percent / 100.0 for st in self.steps) if self.steps else self.schedule

    @property
    def scheduled(self) -> bool:
        return bool(self.steps)


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment in one layer. Its bucket range comes from `buckets` [start, end), from
    `traffic` (a fraction of the layer, placed in the first free range), or from its variants'
    own `buckets`. `control` names the baseline arm (default: the first variant)."""

    name: str
    layer: str
    variants: tuple[VariantConfig, ...]
    traffic: float | None = None
    buckets: tuple[int, ...] = ()
    control: str | None = None
    ramp: RampConfig | tuple[Any, ...] = field(default_factory=RampConfig)  # a list: RampStepConfig mappings
    guardrail: GuardrailConfig | None = None  # with the list form of `ramp` (steps by the clock)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.ramp, RampConfig):  # the list form: steps by the clock
            # typed here, not by the field's type: a union would report the mapping branch's error
            steps = tuple(st if isinstance(st, RampStepConfig) else
                          from_dict(RampStepConfig, st, f"experiment {self.name!r}", path=f"ramp[{i}]")
                          for i, st in enumerate(self.ramp))
            guards = () if self.guardrail is None else (self.guardrail,)
            object.__setattr__(self, "ramp", RampConfig(steps=steps, guardrails=guards))
        elif self.guardrail is not None:
            raise ValueError(f"experiment {self.name!r}: guardrail goes with `ramp: [steps]`; "
                             "in the mapping form of ramp use ramp.guardrails")
        names = [v.name for v in self.variants]
        if len(names) < 2:
            raise ValueError(f"experiment {self.name!r}: needs at least 2 variants, got {len(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: duplicate variant names {names}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"experiment {self.name!r}: control {self.control!r} is not a variant ({names})")
        pinned = [bool(v.buckets) for v in self.variants]
        if any(pinned) and not all(pinned):
            raise ValueError(f"experiment {self.name!r}: either every variant has buckets or none")
        sources = sum([self.traffic is not None, bool(self.buckets), all(pinned)])
        if sources != 1:
            raise ValueError(f"experiment {self.name!r}: set exactly one of traffic, buckets, or variant buckets")
        if self.traffic is not None and not 0.0 < self.traffic <= 1.0:
            raise ValueError(f"experiment {self.name!r}: traffic must be in (0, 1], got {self.traffic}")
        if self.buckets:
            _check_range(self.buckets, f"experiment {self.name!r} buckets")
        shares = [v.share for v in self.variants]
        if any(s is not None for s in shares):
            if any(s is None for s in shares):
                raise ValueError(f"experiment {self.name!r}: give a share to every variant or to none")
            if not math.isclose(sum(shares), 1.0, abs_tol=1e-9):  # type: ignore[arg-type]
                raise ValueError(f"experiment {self.name!r}: variant shares sum to {sum(shares)}, not 1")  # type: ignore[arg-type]

    @property
    def control_variant(self) -> str:
        return self.control or self.variants[0].name

    def variant_shares(self) -> list[float]:
        if self.variants[0].share is None:
            return [1.0 / len(self.variants)] * len(self.variants)
        return [float(v.share) for v in self.variants]  # type: ignore[arg-type]


@dataclass(frozen=True)
class LayerConfig:
    """A layer hashes users with its own salt (default: its name), so its split is
    independent of every other layer's. `owns` (optional) lists the parameter path prefixes its
    experiments may change, e.g. ["rank."]."""

    name: str
    salt: str | None = None
    owns: tuple[str, ...] = ()

    @property
    def hash_salt(self) -> str:
        return self.salt if self.salt is not None else self.name


@dataclass(frozen=True)
class RolloutConfig:
    """Parameters pushed to everyone except a long-term holdout that keeps the old values.

    The holdout is `holdout_buckets` [start, end) of the holdout layer, or by default the first
    `holdout` fraction of it; rollouts with the same fraction share one holdout group.
    """

    name: str
    params: dict[str, Any]
    holdout: float = 0.05
    holdout_buckets: tuple[int, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError(f"rollout {self.name!r}: params are empty")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"rollout {self.name!r}: holdout must be in [0, 1), got {self.holdout}")
        if self.holdout_buckets:
            _check_range(self.holdout_buckets, f"rollout {self.name!r} holdout_buckets")


@dataclass(frozen=True)
class ExperimentsConfig:
    """Top level of configs/experiments.yaml."""

    n_buckets: int = 1000
    holdout_salt: str = "holdout"
    layers: tuple[LayerConfig, ...] = ()
    experiments: tuple[ExperimentConfig, ...] = ()
    rollouts: tuple[RolloutConfig, ...] = ()

    def __post_init__(self) -> None:
        if self.n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {self.n_buckets}")


def load_experiments_config(path: str | Path) -> ExperimentsConfig:
    """Read and type-check the YAML file; cross-object checks happen in ExperimentPlatform."""
    return from_dict(ExperimentsConfig, load_yaml(path), "experiments config")
