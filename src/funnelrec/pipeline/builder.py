"""Fitting, apart from serving: `FunnelBuilder` fits every component of a funnel and hands them
to a `Funnel` (pipeline/funnel.py), which only plans and serves requests.

    funnel = FunnelBuilder(config).fit(dataset, split.train, labels=split.valid)

Each component can be fitted again alone and swapped into a served funnel — what the online
learner calls:

    ch = builder.fit_channel("itemcf", TrainData(dataset, new_train))
    funnel2 = funnel.with_components(channels__itemcf=ch)

The ranker is trained on recall candidates: channels fitted on train give each label user its
merged candidates; positives are the label interactions among them (train/candidate_ranker.py
builds the samples). `rank.label_folds` more label sets are carved out of train, with the channels
refitted on the rest. The pre-ranker is distilled from the fitted ranker's fused scores on the
label users' candidates (its validation users left out) (train/prerank.py).
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import RANKERS, RECALL_CHANNELS
from funnelrec.data.dataset import Dataset, TrainData, interactions_csr
from funnelrec.features.candidates import candidate_features
from funnelrec.pipeline.config import ChannelSpec, FunnelConfig
from funnelrec.pipeline.funnel import Funnel, FunnelStats
from funnelrec.recall.base import RecallChannel
from funnelrec.train.candidate_ranker import CandidateRanker, LabelSet
from funnelrec.train.prerank import PreRanker


def build_channel(spec: ChannelSpec) -> RecallChannel:
    """An unfitted channel of registered kind `spec.kind`, its params checked against its config."""
    import funnelrec.recall  # noqa: F401  (registers every channel)

    cls = RECALL_CHANNELS.get(spec.kind)
    cfg_cls = getattr(cls, "config_class", None)
    if cfg_cls is not None:
        return cls(from_dict(cfg_cls, dict(spec.params), f"recall channel {spec.name!r} params"), name=spec.name)
    return cls(name=spec.name, **spec.params)


class FunnelBuilder:
    """Fits a `Funnel`'s components from a `FunnelConfig` (scikit-learn style: fit returns the result)."""

    def __init__(self, config: FunnelConfig | None = None) -> None:
        self.config = config or FunnelConfig()

    # ------------------------------------------------------------------ components
    def fit_channel(self, name: str, data: TrainData) -> RecallChannel:
        spec = next((c for c in self.config.recall.channels if c.name == name), None)
        if spec is None:
            raise ConfigError(f"no channel {name!r} in the funnel config; configured: "
                              f"{', '.join(c.name for c in self.config.recall.channels)}")
        return build_channel(spec).fit(data)

    def fit_channels(self, data: TrainData, progress: bool = False,
                     seconds: dict[str, float] | None = None) -> dict[str, RecallChannel]:
        specs = self.config.recall.channels
        if self.config.engine.name != "inprocess":  # the tables on an offline engine (engines/)
            from funnelrec.engines import fit_channels_on_engine

            return fit_channels_on_engine(self.config.engine, {s.name: build_channel(s) for s in specs}, data, seconds)
        it = specs
        if progress:
            from tqdm import tqdm

            it = tqdm(specs, desc="fitting recall channels", unit="channel")
        out = {}
        for spec in it:
            t0 = time.perf_counter()
            out[spec.name] = build_channel(spec).fit(data)
            if seconds is not None:
                seconds[spec.name] = time.perf_counter() - t0
        return out

    def label_set(self, channels: dict[str, RecallChannel], data: TrainData, labels: pl.DataFrame) -> LabelSet:
        """The label users' merged candidates from `channels` (fitted on `data`) and their labels."""
        ds = data.dataset
        users = np.unique(labels["user_idx"].to_numpy())
        value = self.config.rank.like_value_column(labels)
        positives = interactions_csr(labels, ds.n_users, ds.n_items, value=value)
        if value is None:
            positives.data[:] = 1.0
        stats = FunnelStats.of(data)
        probe = Funnel(self.config, ds, channels, stats)  # no ranker: merge order, no features attached
        merged = probe.merge(probe.recall(users))
        return LabelSet(merged, users, positives, stats.history, stats.item_log_pop, stats.user_log_act,
                        labels=labels, events=data.interactions)

    def fit_ranker(self, dataset: Dataset, train: pl.DataFrame, labels: pl.DataFrame,
                   channels: dict[str, RecallChannel], progress: bool = False) -> CandidateRanker:
        """The ranker trained on `label_sets` (the real one plus `rank.label_folds` folds)."""
        sets = self.label_sets(dataset, train, labels, channels)
        return CandidateRanker(self.config.rank).fit(dataset, train, sets, progress=progress)

    def label_sets(self, dataset: Dataset, train: pl.DataFrame, labels: pl.DataFrame,
                   channels: dict[str, RecallChannel]) -> list[LabelSet]:
        """The real label set (channels on train, labels) plus `rank.label_folds` folds carved from
        train: each user's `fold_fraction` of train rows become labels, channels refit on the rest
        (several rankers can be trained on the same sets: bench/funnel_rankers.py)."""
        rs = self.config.rank
        sets = [self.label_set(channels, TrainData(dataset, train), labels)]
        for f in range(rs.label_folds):
            rng = np.random.default_rng(rs.seed + 1 + f)
            t = train.with_columns(pl.Series("_r", rng.random(train.height)))
            t = t.with_columns(pl.col("_r").rank("ordinal").over("user_idx").alias("_k"),
                               (pl.len().over("user_idx") * rs.fold_fraction).floor().alias("_m"))
            fold_labels = t.filter(pl.col("_k") <= pl.col("_m")).drop("_r", "_k", "_m")
            rest = t.filter(pl.col("_k") > pl.col("_m")).drop("_r", "_k", "_m")
            data = TrainData(dataset, rest)
            sets.append(self.label_set(self.fit_channels(data), data, fold_labels))
        return sets

    def fit_prerank(self, funnel: Funnel, users: np.ndarray) -> PreRanker:
        """Distil `funnel`'s fine ranker into a `PreRanker` on `users`' merged candidates (the
        ranker's validation users are left out: they are the held-out requests of
        offline.prerank_recall)."""
        spec = self.config.prerank
        users = np.setdiff1d(users, getattr(funnel.ranker_, "valid_users_", np.empty(0, np.int64)))
        merged = funnel.candidates(users)
        fused = [f for f, _ in funnel.rank_tasks(merged, users)]
        u = np.repeat(users, [len(m) for m in merged])
        items = np.concatenate([m.items for m in merged])
        _, _, X = candidate_features(merged, users, funnel.item_log_pop_, funnel.user_log_act_)
        r = funnel.ranker_
        pr = PreRanker(spec.keep, spec.dim, tuple(spec.hidden), spec.epochs, spec.lr, spec.batch_size, spec.seed)
        pr.fit(r.user_rows_, r.item_rows_, r.spec_.n_embeddings, u, items, np.concatenate(fused), X)
        pr.channel_names_ = tuple(next((m.channels for m in merged), ()))  # its dense block's layout
        return pr

    # ------------------------------------------------------------------ the whole funnel
    def fit(self, dataset: Dataset, train: pl.DataFrame, labels: pl.DataFrame | None = None,
            progress: bool = False) -> Funnel:
        """Fit every channel on `train`; train the ranker on the merged candidates of the users
        in `labels` (interactions after/beside train, e.g. the validation split) as positives."""
        cfg = self.config
        from funnelrec.pipeline.validate import check_against

        if cfg.labels.map:  # impressions are exposure, not consumption (data/source.py `consumptions`)
            train = cfg.labels.consumptions(train)
            labels = None if labels is None else cfg.labels.consumptions(labels)
        check_against(cfg, dataset, train)  # every column key against the tables, before any fit
        if cfg.labels.map:  # the label map's label_<task> / weight_<task> columns (data/source.py)
            train = cfg.labels.label_columns(train) if not _has_labels(cfg, train) else train
            labels = labels if labels is None or _has_labels(cfg, labels) else cfg.labels.label_columns(labels)
        if labels is not None:  # an unknown ranker name fails before anything is fitted
            from funnelrec.models.ranking.common import load_all

            load_all()
            RANKERS.get(cfg.rank.model)
        data = TrainData(dataset, train)
        seconds: dict[str, float] = {}
        channels = self.fit_channels(data, progress, seconds)
        stats = FunnelStats.of(data)
        funnel = Funnel(cfg, dataset.catalogue(), channels, stats, fit_seconds=seconds)
        if labels is None or not labels.height:
            return funnel
        t0 = time.perf_counter()
        ranker = self.fit_ranker(dataset, train, labels, channels, progress)
        seconds["ranker"] = time.perf_counter() - t0
        funnel = funnel.with_components(ranker=ranker)
        if cfg.prerank.enabled:
            t0 = time.perf_counter()
            pre = self.fit_prerank(funnel, np.unique(labels["user_idx"].to_numpy()))
            seconds["prerank"] = time.perf_counter() - t0
            funnel = funnel.with_components(prerank=pre)
        funnel.fit_seconds_ = seconds
        return funnel


def _has_labels(cfg: FunnelConfig, df: pl.DataFrame) -> bool:
    return all(f"label_{t}" in df.columns for t in cfg.labels.tasks)
