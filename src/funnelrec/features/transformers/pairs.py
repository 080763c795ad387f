"""Features of the pair or of its time, computed per sample (not tabulated per entity).

- `CrossFeatures`: for a cross (user field a, item field b), one slot s and every pair of the
  two fields' columns (W_a · W_b columns, user column major):

      fid = make_fid(s, mix64(hash(fid_a), hash(fid_b))),   PAD if either side is PAD

  (features/fid.py: `mix64` is the splitmix64 finalizer of h_a·φ ⊕ h_b, so the cross needs no
  vocabulary of value pairs and is vectorized over the batch).
- `ContextFeatures`: the UTC hour (ts // 3600) mod 24 and weekday (ts // 86400 + 3) mod 7
  (0 = Monday; 1970-01-01 was a Thursday) of the sample time, one slot each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnelrec.core.errors import ConfigError
from funnelrec.core.registry import FEATURE_TRANSFORMERS
from funnelrec.data.dataset import TrainData
from funnelrec.features.fid import PAD_FID, hash_values, make_fid, mix64
from funnelrec.features.transformers.base import FeatureTransformer, FitContext, require_known, require_ts

CONTEXT_FEATURES = ("hour", "weekday")


@dataclass(frozen=True)
class CrossFeaturesConfig:
    crosses: tuple[tuple[str, str], ...] = ()  # (user field, item field), fields fitted before


@FEATURE_TRANSFORMERS.register("crosses")
class CrossFeatures(FeatureTransformer):
    """Hashed user × item field crosses; reads the two fields' FIDs from the context, so it is
    fitted after the families that make them (FieldFids, CountFeatures)."""

    Config = CrossFeaturesConfig

    def fit(self, train: TrainData, context: FitContext) -> CrossFeatures:
        self._start_fit(train)
        self.crosses_: list[tuple[int, np.ndarray, np.ndarray]] = []  # (slot, user FIDs, item FIDs)
        names: list[str] = []
        for uc, ic in self.config.crosses:
            for col, side in ((uc, "user"), (ic, "item")):
                if col not in context.fields or context.fields[col][0] != side:
                    raise ConfigError(f"cross ({uc}, {ic}): {col!r} is not a {side} field of this encoder")
            ufids, ifids = context.fields[uc][1], context.fields[ic][1]
            self.crosses_.append((context.take_slot(), ufids, ifids))
            names += [f"{uc}*{ic}"] * (ufids.shape[1] * ifids.shape[1])
        self.pair_names_ = tuple(names)
        return self

    def pair_fids(self, u, i, ts):
        parts = [np.zeros((len(u), 0), np.int64)]
        for slot, ufids, ifids in self.crosses_:
            hu = ufids[u].view(np.uint64)[:, :, None]
            hi = ifids[i].view(np.uint64)[:, None, :]
            w = hu.shape[1] * hi.shape[2]
            f = make_fid(slot, mix64(hu, hi)).reshape(len(u), w)
            pad = ((hu == PAD_FID) | (hi == PAD_FID)).reshape(len(u), w)
            parts.append(np.where(pad, PAD_FID, f))
        return np.concatenate(parts, axis=1)


@dataclass(frozen=True)
class ContextFeaturesConfig:
    features: tuple[str, ...] = ()  # subset of CONTEXT_FEATURES

    def __post_init__(self) -> None:
        require_known(self.features, CONTEXT_FEATURES, "context features")


@FEATURE_TRANSFORMERS.register("context")
class ContextFeatures(FeatureTransformer):
    """Hour and weekday of the sample time as FIDs (needs ts)."""

    Config = ContextFeaturesConfig

    def fit(self, train: TrainData, context: FitContext) -> ContextFeatures:
        self._start_fit(train)
        self.slots_ = [(context.take_slot(), c) for c in self.config.features]
        self.hashes_ = {"hour": hash_values(np.arange(24)), "weekday": hash_values(np.arange(7))}
        self.pair_names_ = tuple(self.config.features)
        return self

    @staticmethod
    def values(ts: np.ndarray, feature: str) -> np.ndarray:
        """(N,) int64 hour 0..23 or weekday 0..6 (0 = Monday) of unix times ts (UTC)."""
        return (ts // 3600) % 24 if feature == "hour" else (ts // 86400 + 3) % 7

    def pair_fids(self, u, i, ts):
        if not self.slots_:
            return np.zeros((len(u), 0), np.int64)
        t = require_ts(ts, "context features")
        return np.stack([make_fid(slot, self.hashes_[c][self.values(t, c)]) for slot, c in self.slots_], axis=1)
