"""Multi-task score fusion — the one definition the rank stage, the ranker's validation and the
pre-ranker's teacher all use.

    fused = Σ_t w_t · logit_t   over the tasks present; a task without a configured weight counts 1

    >>> import numpy as np
    >>> fuse({"ctr": np.array([1.0, 2.0]), "like": np.array([0.5, 0.0])}, {"like": 2.0})
    array([2., 2.], dtype=float32)
"""

from __future__ import annotations

import numpy as np


def fuse(tasks: dict[str, np.ndarray], weights: dict[str, float] | None = None) -> np.ndarray:
    """Σ_t weights[t] · tasks[t] over the tasks present (missing weight = 1)."""
    weights = weights or {}
    out = None
    for t, v in tasks.items():
        term = float(weights.get(t, 1.0)) * np.asarray(v, dtype=np.float32)
        out = term if out is None else out + term
    return out if out is not None else np.empty(0, np.float32)
