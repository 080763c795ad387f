import numpy as np
import torch

from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.lr import LR
from funnelrec.train.calibration import calibrate_downsampled, downsample_negatives, downsampling_offset
from funnelrec.train.losses import bce_loss, multitask_bce, watch_time_weights
from funnelrec.train.trainer import Trainer, TrainerConfig

CELLS = 4


def _cells(n, seed):
    rng = np.random.default_rng(seed)
    c = rng.integers(0, CELLS, n)
    return rng, c, {"sparse": torch.from_numpy(c[:, None] + 1)}


def _fit_lr(batch, loss, epochs=150, lr=0.1):
    torch.manual_seed(0)
    model = LR(FeatureSpec(n_embeddings=CELLS + 1, n_fields=1))
    cfg = TrainerConfig(epochs=epochs, batch_size=len(batch["label"]), lr=lr, num_threads=1)
    Trainer(cfg).fit(model, loss, batch)
    return model


def test_watch_time_weighted_lr_estimates_expected_watch_time():
    rng, c, batch = _cells(10000, 0)
    p_click = np.array([0.02, 0.05, 0.1, 0.03])[c]
    mean_t = np.array([30.0, 5.0, 60.0, 12.0])[c]
    y = (rng.random(len(c)) < p_click).astype(np.float32)
    t = np.where(y > 0, rng.exponential(mean_t), 0.0)
    batch["label"] = torch.from_numpy(y)
    batch["weight"] = watch_time_weights(batch["label"], torch.from_numpy(t))
    model = _fit_lr(batch, bce_loss(), epochs=200)
    with torch.inference_mode():
        odds = torch.exp(model({"sparse": torch.arange(1, CELLS + 1)[:, None]})["ctr"]).numpy()
    for k in range(CELLS):
        cell = c == k
        exact = t[cell].sum() / (cell.sum() - y[cell].sum())  # Σ_pos T / N_neg
        expected_t = t[cell].mean()  # E[T] per impression
        assert abs(odds[k] / exact - 1) < 0.02
        assert abs(odds[k] / expected_t - 1) < 0.12  # ≈ E[T]/(1-p), p ≤ 0.1


def test_negative_downsampling_offset_keeps_predictions_calibrated():
    rng, c, full = _cells(200000, 1)
    p = np.array([0.01, 0.03, 0.06, 0.02])[c]
    y = (rng.random(len(c)) < p).astype(np.float32)
    keep = downsample_negatives(y, 0.2, seed=2)
    assert y[keep].sum() == y.sum() and len(keep) < 0.25 * len(y)
    sampled = {"sparse": full["sparse"][keep], "label": torch.from_numpy(y[keep])}
    with_offset = _fit_lr(sampled, bce_loss(logit_offset=downsampling_offset(0.2)))
    without = _fit_lr(sampled, bce_loss())
    with torch.inference_mode():
        p_cal = torch.sigmoid(with_offset(full)["ctr"]).numpy()  # served WITHOUT the offset
        p_raw = torch.sigmoid(without(full)["ctr"]).numpy()
    assert abs(p_cal.mean() / y.mean() - 1) < 0.02
    assert p_raw.mean() > 3 * y.mean()  # uncorrected: inflated by ~1/keep_rate
    assert abs(calibrate_downsampled(p_raw, 0.2).mean() / y.mean() - 1) < 0.03


def test_multitask_loss_is_weighted_sum_of_bce():
    class Two(torch.nn.Module):
        def forward(self, b):
            return {"ctr": b["s1"], "cvr": b["s2"]}

    b = {"s1": torch.tensor([0.3, -1.0]), "s2": torch.tensor([2.0, 0.5]),
         "label_ctr": torch.tensor([1.0, 0.0]), "label_cvr": torch.tensor([0.0, 1.0])}

    def bce(s, y):  # by hand
        return float(np.mean([-np.log(1 / (1 + np.exp(-a))) if t else -np.log(1 - 1 / (1 + np.exp(-a)))
                              for a, t in zip(s.tolist(), y.tolist())]))

    want = 0.7 * bce(b["s1"], b["label_ctr"]) + 0.3 * bce(b["s2"], b["label_cvr"])
    assert abs(float(multitask_bce({"ctr": 0.7, "cvr": 0.3})(Two(), b)) - want) < 1e-6
