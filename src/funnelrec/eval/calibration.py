"""Calibration of predicted probabilities: reliability bins, ECE, and the ROC / reliability plots
of `funnelrec evaluate ctr --plot DIR`.

Reliability bins: [0, 1] cut into `n_bins` equal-width bins, bin b = [b/n, (b+1)/n) (the last
closed); for each, the sample count n_b, the mean prediction conf_b and the positive rate acc_b.

    ECE = Σ_b (n_b / N) · |acc_b − conf_b|        (Guo et al. 2017, equal-width bins)

A ranker can have a high AUC and a large ECE (the scores order well but are not
probabilities); served scores that fuse several objectives or feed a bid need both.

    >>> import numpy as np
    >>> round(expected_calibration_error(np.array([0, 1, 1, 1]), np.array([0.1, 0.3, 0.8, 0.9]), 2), 4)
    0.225
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from funnelrec.core.errors import DataError


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise DataError(f"labels {y.shape} and predictions {p.shape} must be two 1-d arrays of one length")
    if len(p) and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise DataError("predictions must be probabilities in [0, 1] (no NaN)")
    return y, p


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """{"count", "confidence", "positive_rate"} per equal-width bin (n_bins,); empty bins: count 0, NaN means."""
    y, p = _check(y, p)
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(b, weights=p, minlength=n_bins) / count
        rate = np.bincount(b, weights=y, minlength=n_bins) / count
    return {"count": count, "confidence": conf, "positive_rate": rate}


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE = Σ_b (n_b / N) |acc_b − conf_b| over equal-width bins (0.0 for no samples)."""
    bins = reliability_bins(y, p, n_bins)
    n = bins["count"].sum()
    if n == 0:
        return 0.0
    seen = bins["count"] > 0
    gap = np.abs(bins["positive_rate"][seen] - bins["confidence"][seen])
    return float((bins["count"][seen] / n * gap).sum())


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y, p = _check(y, p)
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    last = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]  # the last index of each distinct score
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    pos, neg = max(ys.sum(), 1.0), max(len(ys) - ys.sum(), 1.0)
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]


def write_ctr_plots(y: np.ndarray, p: np.ndarray, out_dir: str | Path, name: str, n_bins: int = 10,
                    auc: float | None = None) -> list[str]:
    """Write `<name>_roc.png` and `<name>_reliability.png` into out_dir (created); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fpr, tpr = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"{name}" + (f" (AUC {auc:.4f})" if auc is not None else ""))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC — {name}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    roc_path = out / f"{name}_roc.png"
    fig.savefig(roc_path, dpi=100, bbox_inches="tight")
    plt.close(fig)

    bins = reliability_bins(y, p, n_bins)
    seen = bins["count"] > 0
    ece = expected_calibration_error(y, p, n_bins)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfectly calibrated")
    ax.plot(bins["confidence"][seen], bins["positive_rate"][seen], marker="o", label=f"{name} (ECE {ece:.4f})")
    ax.set(ylabel="positive rate in bin", title=f"Reliability — {name}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    edges = np.linspace(0, 1, n_bins + 1)
    hist.bar(edges[:-1], bins["count"], width=1 / n_bins, align="edge", edgecolor="white")
    hist.set(xlabel="predicted probability", ylabel="samples")
    rel_path = out / f"{name}_reliability.png"
    fig.savefig(rel_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [str(roc_path), str(rel_path)]
