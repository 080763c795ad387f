"""Calibration after negative downsampling.

Keeping each negative with probability r (`keep_rate`) multiplies the odds by 1/r, so a model
trained on the sampled data over-predicts: logit_sampled = logit_true − log r. Two fixes:

- train with the constant offset c = −log r = log(1/r) added to the logit
  (`bce_loss(logit_offset=downsampling_offset(r))`) and serve the raw logit without it;
- or correct predictions afterwards: p = p_s / (p_s + (1 − p_s)/r)  (`calibrate_downsampled`).

    >>> round(float(calibrate_downsampled(np.array([0.5]), 0.1)[0]), 4)  # odds 1 → 0.1
    0.0909
    >>> round(downsampling_offset(0.1), 4)
    2.3026
"""

from __future__ import annotations

import math

import numpy as np

from funnelrec.core.errors import ConfigError


def _check(rate: float) -> None:
    if not 0 < rate <= 1:
        raise ConfigError(f"negative keep rate must be in (0, 1], got {rate}")


def downsample_negatives(labels: np.ndarray, keep_rate: float, seed: int = 0) -> np.ndarray:
    """Indices of the kept rows: all positives, each negative with probability keep_rate."""
    _check(keep_rate)
    y = np.asarray(labels)
    keep = (y > 0) | (np.random.default_rng(seed).random(len(y)) < keep_rate)
    return np.flatnonzero(keep)


def downsampling_offset(keep_rate: float) -> float:
    """Logit offset c = −log(keep_rate) to add while training on downsampled data."""
    _check(keep_rate)
    return -math.log(keep_rate)


def calibrate_downsampled(p: np.ndarray, keep_rate: float) -> np.ndarray:
    """True-rate probability from a model trained on downsampled data without the offset."""
    _check(keep_rate)
    p = np.asarray(p, dtype=np.float64)
    return p / (p + (1.0 - p) / keep_rate)
