"""Layered bucketing, precedence, ramp-ups and holdouts (overlapping experiments à la
Tang et al., "Overlapping Experiment Infrastructure", KDD 2010).

Each layer hashes a user independently:

    bucket = xxh64(f"{layer_salt}:{user_id}") mod n_buckets

so the splits of two layers are orthogonal; inside a layer, experiments own disjoint bucket
ranges and the buckets nobody owns are the layer's baseline. Parameters resolve as

    default  <  rollout (unless the user is in its holdout)  <  experiment variant

    >>> from funnelrec.core.config import from_dict
    >>> from funnelrec.experiments.config import ExperimentsConfig
    >>> cfg = from_dict(ExperimentsConfig, {"layers": [{"name": "rank"}], "experiments": [
    ...     {"name": "dcn", "layer": "rank", "buckets": [0, 1000], "variants": [
    ...         {"name": "control"}, {"name": "dcnv2", "params": {"rank.model": "dcnv2"}}]}]})
    >>> platform = ExperimentPlatform(cfg, known_params={"rank.model"})
    >>> a = platform.assign("u42")
    >>> a.record["rank"]["experiment"]
    'dcn'
"""

from __future__ import annotations

import bisect
import copy
import difflib
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from funnelrec.core.errors import ConfigError
from funnelrec.experiments.config import (
    ExperimentConfig,
    ExperimentsConfig,
    GuardrailConfig,
    RampConfig,
    load_experiments_config,
)

__all__ = [
    "bucket_of",
    "buckets_of",
    "flatten_params",
    "apply_params",
    "Assignment",
    "RampDecision",
    "RampUp",
    "ExperimentPlatform",
]

BASELINE = "baseline"


def bucket_of(salt: str, user_id: object, n_buckets: int = 1000) -> int:
    """xxh64(f"{salt}:{user_id}") mod n_buckets (UTF-8 bytes, seed 0)."""
    return xxhash.xxh64_intdigest(f"{salt}:{user_id}".encode()) % n_buckets


def buckets_of(salt: str, user_ids: Iterable[object], n_buckets: int = 1000) -> np.ndarray:
    """Buckets of many users, int64 (N,). ~0.3 s per million ids on one core (C hash per id)."""
    h = xxhash.xxh64_intdigest
    prefix = f"{salt}:"
    ids = list(user_ids)
    raw = np.fromiter((h((prefix + str(u)).encode()) for u in ids), dtype=np.uint64, count=len(ids))
    return (raw % np.uint64(n_buckets)).astype(np.int64)


def flatten_params(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"recall": {"quotas": {"swing": 100}}} → {"recall.quotas.swing": 100} (leaves only)."""
    out: dict[str, Any] = {}
    for k, v in nested.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, path + "."))
        else:
            out[path] = v
    return out


def apply_params(nested: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `nested` with dotted-path overrides applied."""
    out = copy.deepcopy(dict(nested))
    for path, value in params.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            child = node.get(p)
            if not isinstance(child, dict):
                raise ConfigError(f"parameter {path!r}: {p!r} is not a section of the config")
            node = child
        node[leaf] = value
    return out


@dataclass(frozen=True)
class Assignment:
    """`params`: dotted-path overrides after precedence; `record`: JSON-able
    {layer: {"experiment": name | None, "variant": name}} plus one
    {"rollout/<name>": {"experiment": name, "variant": "rollout" | "holdout"}} per rollout."""

    user_id: str
    params: dict[str, Any]
    record: dict[str, dict[str, str | None]]


@dataclass(frozen=True)
class RampDecision:
    action: Literal["advanced", "completed", "stopped", "held", "resumed"]
    step: int
    traffic: float
    failed: tuple[str, ...] = ()  # one line per failing guardrail


class RampUp:
    """Ramp-up controller of one experiment: traffic follows its steps (`config.fractions`).

    Manual (`schedule`): `advance(results)` checks every guardrail on `results` (metric → an
    object with `rel_lift` and `p_value`, e.g. stats.TestResult). All pass → next step (or
    "completed" at the last); any fails → "stopped" and traffic drops to 0.

    By the clock (`steps` with times; offsets from `start`, unix seconds): `tick(now, looks)`
    moves to the last step whose time has passed — unless a guardrail look says the treatment
    is worse: then it rolls back to 0 % for good ("stopped", `on_breach: rollback`) or keeps its
    step until the looks clear ("holding", `on_breach: hold`). With guardrails, a step is taken
    only on a look (`looks` not None). Before the first step's time the traffic is 0 ("pending").

    Exposure is monotone either way: the active buckets of each variant are a prefix of its
    range, so users in at 1 % stay in at 5 %.
    """

    def __init__(self, experiment: str, config: RampConfig, start: float | None = None) -> None:
        self.experiment = experiment
        self.config = config
        self.step = config.step
        self.status: Literal["pending", "running", "holding", "completed", "stopped"] = "running"
        self.times: tuple[float, ...] = ()  # unix seconds of each step (scheduled ramps)
        self.failed: tuple[str, ...] = ()  # the last breach's reasons
        self.looks: list = []  # the last guardrail looks (experiments.schedule.GuardLook)
        if config.scheduled:
            from funnelrec.experiments.schedule import format_time, parse_at

            anchor = parse_at(config.start)[1] if config.start is not None else start
            times = []
            for st in config.steps:
                kind, v = parse_at(st.at)
                if kind == "offset" and anchor is None:
                    raise ConfigError(f"ramp of {experiment!r}: step at {st.at!r} is an offset; give ramp.start")
                times.append(v if kind == "time" else anchor + v)  # type: ignore[operator]
            if any(b <= a for a, b in zip(times, times[1:])):
                raise ConfigError(f"ramp of {experiment!r}: step times must increase, got "
                                  f"{', '.join(format_time(t) for t in times)}")
            self.times = tuple(times)
            self.step, self.status = -1, "pending"

    @property
    def traffic(self) -> float:
        if self.status in ("stopped", "pending"):
            return 0.0
        return self.config.fractions[self.step]

    def due_step(self, now: float) -> int:
        """The last step whose time is ≤ now (−1: none yet)."""
        return bisect.bisect_right(self.times, now) - 1

    def next_time(self) -> float:
        """When the next step is due (inf: none left, or stopped)."""
        if self.status == "stopped" or self.step + 1 >= len(self.times):
            return math.inf
        return self.times[self.step + 1]

    def tick(self, now: float, looks: list | None = None) -> RampDecision | None:
        """Apply the clock and (when given) this tick's guardrail looks; a decision when the
        traffic or status changed, else None."""
        if not self.config.scheduled:
            raise ConfigError(f"ramp of {self.experiment!r} is manual (schedule); move it with advance()")
        if self.status == "stopped":
            return None
        decision: RampDecision | None = None
        if looks is not None:
            self.looks = list(looks)
            worse = tuple(lk.reason() for lk in looks if lk.worse)
            if worse:
                self.failed = worse
                if self.config.on_breach == "rollback":
                    self.status = "stopped"
                    return RampDecision("stopped", self.step, 0.0, worse)
                if self.status != "holding":
                    self.status = "holding"
                    decision = RampDecision("held", self.step, self.traffic, worse)
            elif self.status == "holding":
                self.status = "running" if self.step >= 0 else "pending"
                decision = RampDecision("resumed", self.step, self.traffic)
        if self.status == "holding" or (self.config.guardrails and looks is None):
            return decision
        due = self.due_step(now)
        if due > self.step:
            self.step = due
            done = due == len(self.times) - 1
            self.status = "completed" if done else "running"
            decision = RampDecision("completed" if done else "advanced", self.step, self.traffic)
        return decision

    @staticmethod
    def check(guardrail: GuardrailConfig, result: Any) -> str | None:
        """A one-line reason when `result` breaks `guardrail`, else None. A lift or p-value that
        is not a number (e.g. a control value of 0) fails: a guardrail that cannot be checked
        must not let the ramp advance."""
        rel, p = float(result.rel_lift), float(result.p_value)
        if math.isnan(rel) or math.isnan(p):
            return f"{guardrail.metric}: cannot be checked (relative lift {rel}, p = {p})"
        sign = 1.0 if guardrail.direction == "higher_is_better" else -1.0
        worse_by = -sign * rel  # > 0 means the metric moved the bad way
        if guardrail.max_degradation is not None and worse_by > guardrail.max_degradation:
            return f"{guardrail.metric}: {worse_by:+.2%} worse, above the {guardrail.max_degradation:.2%} limit"
        if guardrail.alpha is not None and worse_by > 0 and p < guardrail.alpha:
            return f"{guardrail.metric}: significantly worse (p = {p:.3g} < {guardrail.alpha})"
        return None

    def advance(self, guardrail_results: Mapping[str, Any]) -> RampDecision:
        if self.config.scheduled:
            raise ConfigError(f"ramp of {self.experiment!r} follows the clock (steps with times); it moves by tick()")
        if self.status != "running":
            raise ConfigError(f"ramp of {self.experiment!r} is {self.status}; it cannot advance")
        failed = []
        for g in self.config.guardrails:
            if g.metric not in guardrail_results:
                raise ConfigError(f"ramp of {self.experiment!r}: no result for guardrail metric {g.metric!r}")
            reason = self.check(g, guardrail_results[g.metric])
            if reason:
                failed.append(reason)
        if failed:
            self.status = "stopped"
            return RampDecision("stopped", self.step, 0.0, tuple(failed))
        if self.step + 1 < len(self.config.schedule):
            self.step += 1
            return RampDecision("advanced", self.step, self.traffic)
        self.status = "completed"
        return RampDecision("completed", self.step, self.traffic)

    def state(self) -> dict[str, Any]:
        """Persist with the config (write `step` back to ramp.step)."""
        return {"experiment": self.experiment, "step": self.step, "status": self.status, "traffic": self.traffic}

    def steps(self) -> list[dict[str, Any]]:
        """Each step: index, time (scheduled; unix seconds) or None, percent, and its state —
        "done" (passed), "current", "pending" (not reached), "rolled back" (the step that was
        live when a breach stopped the ramp) or "held" (the current step while holding)."""
        out = []
        for i, frac in enumerate(self.config.fractions):
            if i < self.step:
                st = "done"
            elif i == self.step:
                st = {"stopped": "rolled back", "holding": "held"}.get(self.status, "current")
            else:
                st = "pending"
            out.append({"step": i + 1, "at": self.times[i] if self.times else None, "percent": frac * 100, "state": st})
        return out


@dataclass(frozen=True)
class _Arm:
    experiment: str
    variant: str
    start: int
    end: int
    params: dict[str, Any]


class ExperimentPlatform:
    """Validated experiment set that assigns users.

    known_params: the pipeline config's flattened keys (see `flatten_params`); every override
    must be one of them. None skips that check (analysis-only use).
    clock: unix seconds now (default `time.time`; tests pass a fake one). Scheduled ramps
    count their offsets from the clock's time when the platform is built (unless they give
    `start`), and move when `tick` is called (the service calls it on every request).
    """

    def __init__(self, config: ExperimentsConfig, known_params: Collection[str] | None = None,
                 clock: Callable[[], float] = time.time, start: float | None = None) -> None:
        self.config = config
        self.known_params = None if known_params is None else frozenset(known_params)
        self.clock = clock
        # `start`: the time offsets of scheduled ramps count from (default: now) — replicas pass
        # the first replica's, so one restarted later does not run its ramps behind the others
        self.built_at = float(clock()) if start is None else float(start)
        self._layers = {layer.name: layer for layer in config.layers}
        if len(self._layers) != len(config.layers):
            raise ConfigError("duplicate layer names in experiments config")
        if config.holdout_salt in {layer.hash_salt for layer in config.layers}:
            raise ConfigError(f"holdout_salt {config.holdout_salt!r} is also a layer's salt; holdouts must hash independently")
        names = [e.name for e in config.experiments] + [r.name for r in config.rollouts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"duplicate experiment/rollout names: {', '.join(dup)}")
        self._arms: dict[str, list[_Arm]] = {name: [] for name in self._layers}
        self.ramps: dict[str, RampUp] = {}
        self._full: dict[str, float] = {}  # experiment → fraction of the layer it reserves
        self._build_arms()
        self._check_params()
        self._tables = {name: self._table(arms) for name, arms in self._arms.items()}
        n = config.n_buckets
        self._holdouts = []
        for r in config.rollouts:
            lo, hi = r.holdout_buckets or (0, round(r.holdout * n))
            if hi > n:
                raise ConfigError(f"rollout {r.name!r}: holdout_buckets end {hi} exceeds n_buckets {n}")
            self._holdouts.append((r, lo, hi))
        from funnelrec.experiments.schedule import RampOutcomes

        self._scheduled = [r for r in self.ramps.values() if r.config.scheduled]
        self.outcomes = RampOutcomes({r.experiment: {t for g in r.config.guardrails for t in g.events}
                                      for r in self._scheduled if r.config.guardrails})
        self._next_due = -math.inf if self._scheduled else math.inf  # the first tick always looks
        self._next_check = -math.inf
        self._tick_lock = threading.Lock()

    @classmethod
    def from_yaml(cls, path: str | Path, known_params: Collection[str] | None = None,
                  clock: Callable[[], float] = time.time) -> ExperimentPlatform:
        return cls(load_experiments_config(path), known_params, clock)

    # ---- scheduled ramps ----------------------------------------------------------------

    def tick(self, events: Any = None, force: bool = False) -> list[RampDecision]:
        """Move every scheduled ramp to where the clock says, checking guardrails on `events`
        (the service's `EventLog`, read incrementally; or a polars table of the whole log; or a
        path to the log's SQLite file) every `check_every` seconds and whenever a step is due.
        Returns the decisions taken (usually none). Between due times this is one comparison;
        concurrent callers do not wait — one ticks, the others go on with the current traffic.
        Without `events`, a ramp with guardrails does not step (they cannot be checked).
        `force`: look at the guardrails now, whatever `check_every` says."""
        now = float(self.clock())
        if force:
            self._next_due = self._next_check = -math.inf
        if now < self._next_due or not self._tick_lock.acquire(blocking=False):
            return []
        try:
            from funnelrec.experiments.schedule import guardrail_look

            guarded = [r for r in self._scheduled if r.config.guardrails and r.status != "stopped"]
            step_due = any(r.next_time() <= now for r in guarded if r.status != "holding")  # holding: checks only
            looks: dict[str, list] = {}
            if guarded and events is not None and (now >= self._next_check or step_due):
                self.outcomes.update(events)
                for r in guarded:
                    e = self.experiment(r.experiment)
                    looks[r.experiment] = [
                        guardrail_look(e.name, v.name, g, self.outcomes.per_user(e.name, e.control_variant, *g.events),
                                       self.outcomes.per_user(e.name, v.name, *g.events), r.config.tau)
                        for g in r.config.guardrails for v in e.variants if v.name != e.control_variant]
                self._next_check = now + min(r.config.check_every for r in guarded)
            decisions = [d for r in self._scheduled
                         if (d := r.tick(now, looks.get(r.experiment) if r.config.guardrails else None)) is not None]
            due = [r.next_time() for r in self._scheduled if r.status != "holding"]
            if any(r.config.guardrails and r.status != "stopped" for r in self._scheduled) and events is not None:
                due.append(self._next_check)
            self._next_due = min(due, default=math.inf)
            return decisions
        finally:
            self._tick_lock.release()

    # ---- validation and layout ----------------------------------------------------------

    def _build_arms(self) -> None:
        n = self.config.n_buckets
        fixed: dict[str, list[tuple[int, int, str]]] = {name: [] for name in self._layers}
        pending: list[ExperimentConfig] = []
        for e in self.config.experiments:
            if e.layer not in self._layers:
                raise ConfigError(f"experiment {e.name!r}: unknown layer {e.layer!r}; known: {', '.join(self._layers)}")
            ranges = [tuple(v.buckets) for v in e.variants] if e.variants[0].buckets else [tuple(e.buckets)] if e.buckets else []
            for lo, hi in ranges:
                if hi > n:
                    raise ConfigError(f"experiment {e.name!r}: bucket {hi} exceeds n_buckets {n}")
                fixed[e.layer].append((lo, hi, e.name))
            if not ranges:
                pending.append(e)
        for layer, ranges in fixed.items():
            total = sum(hi - lo for lo, hi, _ in ranges) + sum(round(e.traffic * n) for e in pending if e.layer == layer)  # type: ignore[operator]
            if total > n:
                raise ConfigError(f"traffic over 100% in layer {layer!r}: experiments take {total / n:.1%} of its buckets")
            ranges.sort()
            for (lo1, hi1, e1), (lo2, hi2, e2) in zip(ranges, ranges[1:]):
                if lo2 < hi1:
                    what = f"experiment {e1!r}" if e1 == e2 else f"experiments {e1!r} and {e2!r}"
                    raise ConfigError(f"{what} overlap in layer {layer!r}: buckets [{lo1}, {hi1}) and [{lo2}, {hi2})")
        placed: dict[str, tuple[int, int]] = {}
        for e in pending:  # first fit, in config order
            size = round(e.traffic * n)  # type: ignore[operator]
            if size < len(e.variants):
                raise ConfigError(f"experiment {e.name!r}: traffic {e.traffic} gives fewer buckets than variants")
            lo = self._first_fit(fixed[e.layer], size, n)
            if lo is None:
                raise ConfigError(f"experiment {e.name!r}: no free contiguous range of {size} buckets in layer {e.layer!r}")
            fixed[e.layer].append((lo, lo + size, e.name))
            fixed[e.layer].sort()
            placed[e.name] = (lo, lo + size)
        for e in self.config.experiments:
            if e.variants[0].buckets:
                spans = [(v.buckets[0], v.buckets[1]) for v in e.variants]
            else:
                lo, hi = tuple(e.buckets) if e.buckets else placed[e.name]
                cuts = np.round(lo + np.cumsum([0.0, *e.variant_shares()]) * (hi - lo)).astype(int)
                spans = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))
                if any(b <= a for a, b in spans):
                    raise ConfigError(f"experiment {e.name!r}: a variant gets no buckets; raise its traffic")
            self._full[e.name] = sum(b - a for a, b in spans) / n
            for v, (a, b) in zip(e.variants, spans):
                self._arms[e.layer].append(_Arm(e.name, v.name, a, b, dict(v.params)))
            if e.ramp.fractions:
                if e.ramp.fractions[-1] > self._full[e.name] + 1e-9:
                    raise ConfigError(
                        f"experiment {e.name!r}: ramp ends at {e.ramp.fractions[-1]:.1%} but the experiment "
                        f"reserves only {self._full[e.name]:.1%} of layer {e.layer!r}"
                    )
                self.ramps[e.name] = RampUp(e.name, e.ramp, start=self.built_at)

    @staticmethod
    def _first_fit(taken: list[tuple[int, int, str]], size: int, n: int) -> int | None:
        cursor = 0
        for lo, hi, _ in sorted(taken):
            if lo - cursor >= size:
                return cursor
            cursor = max(cursor, hi)
        return cursor if n - cursor >= size else None

    def _check_param(self, path: str, where: str) -> None:
        if self.known_params is not None and path not in self.known_params:
            close = difflib.get_close_matches(path, self.known_params, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown parameter {path!r} in {where}{hint}")

    def _check_params(self) -> None:
        owner: dict[str, str] = {}
        for layer, arms in self._arms.items():
            owns = self._layers[layer].owns
            for arm in arms:
                for path in arm.params:
                    where = f"experiment {arm.experiment!r} variant {arm.variant!r}"
                    self._check_param(path, where)
                    if owns and not any(path.startswith(p) for p in owns):
                        raise ConfigError(f"parameter {path!r} in {where} is outside layer {layer!r}'s prefixes {list(owns)}")
                    if owner.setdefault(path, layer) != layer:
                        raise ConfigError(
                            f"parameter {path!r} is changed in layers {owner[path]!r} and {layer!r}; a parameter belongs to one layer"
                        )
        for r in self.config.rollouts:
            for path in r.params:
                self._check_param(path, f"rollout {r.name!r}")

    def _table(self, arms: list[_Arm]) -> tuple[np.ndarray, np.ndarray]:
        """bucket → arm index (−1 = baseline) and the bucket's offset inside its arm."""
        arm_of = np.full(self.config.n_buckets, -1, dtype=np.int64)
        offset = np.zeros(self.config.n_buckets, dtype=np.int64)
        for i, arm in enumerate(arms):
            arm_of[arm.start : arm.end] = i
            offset[arm.start : arm.end] = np.arange(arm.end - arm.start)
        return arm_of, offset

    # ---- assignment ---------------------------------------------------------------------

    def _active(self, arm: _Arm) -> int:
        """How many buckets of `arm` are live now: all, or a ramp's prefix share of them."""
        ramp = self.ramps.get(arm.experiment)
        if ramp is None:
            return arm.end - arm.start
        return int(round((arm.end - arm.start) * ramp.traffic / self._full[arm.experiment]))

    def _arm_index(self, layer: str, user_id: object) -> int:
        arm_of, offset = self._tables[layer]
        b = bucket_of(self._layers[layer].hash_salt, user_id, self.config.n_buckets)
        i = int(arm_of[b])
        if i < 0 or offset[b] >= self._active(self._arms[layer][i]):
            return -1
        return i

    def layer_arm(self, layer: str, user_id: object) -> tuple[str | None, str]:
        """(experiment, variant) of one user in one layer; (None, "baseline") outside experiments."""
        if layer not in self._layers:
            raise ConfigError(f"unknown layer {layer!r}; known: {', '.join(self._layers)}")
        i = self._arm_index(layer, str(user_id))
        if i < 0:
            return None, BASELINE
        arm = self._arms[layer][i]
        return arm.experiment, arm.variant

    def assign(self, user_id: object) -> Assignment:
        uid = str(user_id)
        params: dict[str, Any] = {}
        record: dict[str, dict[str, str | None]] = {}
        if self._holdouts:
            hb = bucket_of(self.config.holdout_salt, uid, self.config.n_buckets)
            for r, lo, hi in self._holdouts:
                held = lo <= hb < hi
                record[f"rollout/{r.name}"] = {"experiment": r.name, "variant": "holdout" if held else "rollout"}
                if not held:
                    params.update(r.params)
        for layer in self._layers:
            i = self._arm_index(layer, uid)
            if i < 0:
                record[layer] = {"experiment": None, "variant": BASELINE}
            else:
                arm = self._arms[layer][i]
                record[layer] = {"experiment": arm.experiment, "variant": arm.variant}
                params.update(arm.params)
        return Assignment(uid, params, record)

    def assign_layer_many(self, layer: str, user_ids: Iterable[object]) -> np.ndarray:
        """Arm codes (N,) int64 for many users in one layer: index into `arms(layer)`, −1 = baseline."""
        if layer not in self._layers:
            raise ConfigError(f"unknown layer {layer!r}; known: {', '.join(self._layers)}")
        arm_of, offset = self._tables[layer]
        b = buckets_of(self._layers[layer].hash_salt, user_ids, self.config.n_buckets)
        code = arm_of[b]
        active = np.array([self._active(a) for a in self._arms[layer]] + [0], dtype=np.int64)
        code = np.where((code >= 0) & (offset[b] < active[code]), code, -1)
        return code

    def arms(self, layer: str) -> list[tuple[str, str, int, int]]:
        """(experiment, variant, start, end) of every arm in `layer`, in code order."""
        return [(a.experiment, a.variant, a.start, a.end) for a in self._arms[layer]]

    def traffic_shares(self, experiment: str) -> dict[str, float]:
        """Configured share of users per variant of `experiment` (live ramp traffic included);
        the expected shares for the sample-ratio-mismatch check."""
        for arms in self._arms.values():
            sel = [a for a in arms if a.experiment == experiment]
            if sel:
                n = self.config.n_buckets
                return {a.variant: self._active(a) / n for a in sel}
        raise ConfigError(f"unknown experiment {experiment!r}")

    def experiment(self, name: str) -> ExperimentConfig:
        for e in self.config.experiments:
            if e.name == name:
                return e
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(e.name for e in self.config.experiments)}")
