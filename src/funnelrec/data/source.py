"""A team's own logs as the funnel config names them: where the files are (`data:`) and which of
their events teach which ranker task (`labels:`).

    data:                                   # paths relative to the config file
      interactions: events.parquet
      items: items.csv
      schema: schema.yaml
      columns: {user_id: visitor, item_id: sku, timestamp: ts_ms}   # the file's names for them
    labels:
      event_column: event_type
      map:
        view: {task: ctr, means: click}
        cart: {task: conversion, weight: 1.0}
        purchase: {task: conversion, weight: 3.0}
        play: {task: watch_time, value: seconds, means: watch_time}

`DataSpec.load(base)` reads the files through the tabular loader (data/tabular.py), renaming
the file's columns to the contract's first. `LabelSpec.label_columns(df)` adds, per task named
in the map, the label columns of the training samples, which the fine ranker
(train/candidate_ranker.py) reads by name:

    label_<task>   float32, 1 where the row's event maps to the task (or the `value` column's
                   number for a task with `value`, e.g. seconds watched), else 0
    weight_<task>  float32, the map's `weight` of that event (1 on rows of no mapped event)

A row whose event maps to no task is still an interaction (recall learns from it). `means` is
the event's meaning to the online funnel (one of pipeline/eventlog.py's EVENT_TYPES): feedback
of that type is stored as it means — a `view` meaning `click` enters the real-time history like
a click.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from funnelrec.core.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataSpec:
    """Where a team's own files are (CSV or Parquet) and the schema that types them."""

    interactions: str = ""  # "" = no files named here (the CLI's --dataset/--path decide)
    users: str = ""
    items: str = ""
    schema: str = ""
    # the contract's column → the file's name for it (user_id, item_id, timestamp)
    columns: dict[str, str] = field(default_factory=dict)
    name: str = "tabular"  # the dataset's name in reports
    # the ranker learns from the candidates of at most this many users' label events (a seeded
    # sample; 0 = every user's): its fit grows with users × candidates, this bounds it
    label_users: int = 0

    def __post_init__(self) -> None:
        bad = [c for c in self.columns if c not in ("user_id", "item_id", "timestamp")]
        if bad:
            raise ConfigError(f"data.columns: {bad[0]!r} is not a renamable contract column "
                              f"(user_id, item_id, timestamp)")
        if isinstance(self.label_users, bool) or not isinstance(self.label_users, int) or self.label_users < 0:
            raise ConfigError(f"data.label_users must be an integer ≥ 0, got {self.label_users!r}")
        if self.interactions and not self.schema:
            raise ConfigError("data.schema: a schema YAML is required with data.interactions "
                              "(`funnelrec init` writes one)")

    @property
    def given(self) -> bool:
        return bool(self.interactions)

    def paths(self, base: str | Path = ".") -> dict[str, Path | None]:
        """The files, relative paths resolved against `base` (the config file's folder)."""
        root = Path(base)

        def at(p: str) -> Path | None:
            if not p:
                return None
            q = Path(p).expanduser()
            return q if q.is_absolute() else root / q

        return {"interactions": at(self.interactions), "users": at(self.users), "items": at(self.items),
                "schema": at(self.schema)}

    def load(self, base: str | Path = "."):
        """The `Dataset` of these files (tabular loader: separator sniffed, times to unix s)."""
        from funnelrec.data.tabular import load_tabular

        if not self.given:
            raise ConfigError("data.interactions: no interactions file named in the config")
        p = self.paths(base)
        return load_tabular(p["interactions"], p["schema"], users=p["users"], items=p["items"], name=self.name,
                            columns=dict(self.columns) or None)


#: the (1, 0) spellings of an impression log's 0/1 flag column, as its values read as text
FLAG_VALUES = (("1", "0"), ("1.0", "0.0"), ("true", "false"), ("True", "False"))


@dataclass(frozen=True)
class LabelRule:
    """What one event type is: the task it is a positive of, its sample weight, optionally the
    column holding its label value, and its meaning to the online funnel."""

    task: str = ""  # "" = an interaction only, no task label
    weight: float = 1.0
    value: str = ""  # an interactions column whose number is the label (watch seconds); "" = 1
    means: str = ""  # the EVENT_TYPES name online feedback of this type is stored as; "" = itself

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ConfigError(f"labels.map: weight must be > 0, got {self.weight}")


@dataclass(frozen=True)
class LabelSpec:
    """The label map: event type (a value of `event_column`) → `LabelRule`."""

    event_column: str = ""  # "" = no event-type column: every row is one kind of interaction
    map: dict[str, LabelRule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from funnelrec.pipeline.eventlog import EVENT_TYPES

        if self.map and not self.event_column:
            raise ConfigError("labels.event_column: the interactions column holding the event type is "
                              "required with labels.map")
        for ev, rule in self.map.items():
            if rule.means and rule.means not in EVENT_TYPES:
                raise ConfigError(f"labels.map.{ev}.means: {rule.means!r} is not a funnel event type; "
                                  f"known: {', '.join(EVENT_TYPES)}")

    @property
    def tasks(self) -> list[str]:
        """The tasks the map names, in map order (each once)."""
        return list(dict.fromkeys(r.task for r in self.map.values() if r.task))

    def exposure_events(self) -> list[str]:
        """The event types that mean an impression — mapped with `means: impression`, or named
        impression and not mapped to anything else: exposure only, as online, where an
        impression never enters a history or counts as a consumption."""
        out = [ev for ev, r in self.map.items() if (r.means or ev) == "impression"]
        return out if "impression" in self.map or not self.event_column else out + ["impression"]

    def consumptions(self, interactions: pl.DataFrame) -> pl.DataFrame:
        """`interactions` without the rows of `exposure_events`: what every fit and the evaluation's
        positives read. A shown item is not a consumed one; were they kept, itemCF/EASE/Swing would
        learn what the old policy showed (a shop log with two impressions per event: funnel NDCG@10
        0.32 → 0.12–0.15, docs/BENCHMARKS.md session 19). A row without an event type is an
        interaction, except in an impression log's 0/1 flag (`is_flag`), where it was shown and not
        known to be clicked: exposure."""
        shown = self.exposure_events()
        if not shown or self.event_column not in interactions.columns:
            return interactions
        out = ~pl.col(self.event_column).cast(pl.String).is_in(shown)
        return interactions.filter(out.fill_null(not self.is_flag()))

    def is_flag(self) -> bool:
        """Whether the event column is an impression log's 0/1 flag (what `funnelrec init` maps
        such a column to: two values, "1"/"0", "1.0"/"0.0" or "true"/"false", the 0 an impression)."""
        zero = next((z for one, z in FLAG_VALUES if set(self.map) == {one, z}), None)
        return zero is not None and (self.map[zero].means or zero) == "impression"

    def fitted_rows(self, interactions: pl.DataFrame) -> pl.DataFrame:
        """What every fit and evaluation reads of a table: its `consumptions`, with `label_columns`."""
        return self.label_columns(self.consumptions(interactions)) if self.map else interactions

    def meaning(self) -> dict[str, str]:
        """Event type → the EVENT_TYPES name it is stored as online (only the renamed ones)."""
        return {ev: r.means for ev, r in self.map.items() if r.means and r.means != ev}

    def check(self, interactions: pl.DataFrame, where: str = "labels") -> None:
        """Every column the map reads exists; every mapped event type occurs (a typo would
        otherwise train a task on nothing). ConfigError naming the key."""
        if not self.event_column:
            return
        if self.event_column not in interactions.columns:
            raise ConfigError(f"{where}.event_column: {self.event_column!r} is not an interactions column; "
                              f"it has: {', '.join(c for c in interactions.columns if not c.endswith('_idx'))}")
        seen = set(interactions[self.event_column].cast(pl.String).unique().drop_nulls().to_list())
        shown = set(self.exposure_events())
        for ev, rule in self.map.items():
            # refused when a fit starts, not when a config is read: an artifact fitted before this
            # rule still loads and serves
            if ev in shown and (rule.task or rule.value or rule.weight != 1.0):
                what = f"label task {rule.task!r}" if rule.task else "carry a value or a weight"
                raise ConfigError(f"{where}.map.{ev}: an impression is exposure only — online it is never a positive, "
                                  f"and the fit leaves its rows out — so it cannot {what}; drop "
                                  f"`task:`/`value:`/`weight:` (the events that follow an impression are its positives)")
            if ev not in seen and ev not in shown:  # exposure rows are left out of every fit (`consumptions`)
                raise ConfigError(f"{where}.map.{ev}: no interaction has {self.event_column} = {ev!r}; "
                                  f"the values are: {', '.join(sorted(seen)[:20])}")
            if rule.value and rule.value not in interactions.columns:
                raise ConfigError(f"{where}.map.{ev}.value: {rule.value!r} is not an interactions column")
            if rule.value and not interactions.schema[rule.value].is_numeric():
                raise ConfigError(f"{where}.map.{ev}.value: column {rule.value!r} is "
                                  f"{interactions.schema[rule.value]}, not a number")
        for task in self.tasks:
            if not any(rule.task == task for ev, rule in self.map.items() if ev in seen):
                raise DataError(f"{where}: task {task!r} has no event in the data")

    def label_columns(self, interactions: pl.DataFrame) -> pl.DataFrame:
        """`interactions` plus label_<task> and weight_<task> per task (see the module doc)."""
        if not self.map:
            return interactions
        self.check(interactions)
        ev = pl.col(self.event_column).cast(pl.String)
        out = []
        for task in self.tasks:
            label: Any = pl.lit(0.0)
            weight: Any = pl.lit(1.0)
            for name, rule in self.map.items():
                if rule.task != task:
                    continue
                val = pl.col(rule.value).cast(pl.Float64).fill_null(0.0) if rule.value else pl.lit(1.0)
                label = pl.when(ev == name).then(val).otherwise(label)
                weight = pl.when(ev == name).then(pl.lit(float(rule.weight))).otherwise(weight)
            out += [label.cast(pl.Float32).alias(f"label_{task}"), weight.cast(pl.Float32).alias(f"weight_{task}")]
        return interactions.with_columns(out)
