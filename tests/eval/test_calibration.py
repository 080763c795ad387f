"""ECE and reliability bins against a hand-computed case, the ROC curve against scikit-learn,
and `funnelrec evaluate ctr --plot DIR` writing real PNGs with ECE in the report."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from funnelrec.core.errors import DataError
from funnelrec.eval.calibration import expected_calibration_error, reliability_bins, roc_curve


def test_ece_hand_computed():
    # 5 bins of width 0.2:
    #   bin 0 [0, .2):   p = .05, .15         y = 0, 0   conf .10, acc 0    gap .10
    #   bin 1 [.2, .4):  p = .30              y = 1      conf .30, acc 1    gap .70
    #   bin 2 [.4, .6):  (empty)
    #   bin 3 [.6, .8):  p = .70, .70, .75    y = 1, 0, 1  conf .7166…, acc 2/3  gap .05
    #   bin 4 [.8, 1]:   p = .90, 1.0         y = 1, 1   conf .95, acc 1    gap .05
    # ECE = (2·.10 + 1·.70 + 3·.05 + 2·.05) / 8 = 1.15 / 8 = 0.14375
    p = np.array([0.05, 0.15, 0.30, 0.70, 0.70, 0.75, 0.90, 1.0])
    y = np.array([0, 0, 1, 1, 0, 1, 1, 1])
    assert expected_calibration_error(y, p, n_bins=5) == pytest.approx(0.14375, abs=1e-12)
    bins = reliability_bins(y, p, n_bins=5)
    np.testing.assert_array_equal(bins["count"], [2, 1, 0, 3, 2])
    np.testing.assert_allclose(bins["confidence"][[0, 1, 3, 4]], [0.10, 0.30, 2.15 / 3, 0.95])
    np.testing.assert_allclose(bins["positive_rate"][[0, 1, 3, 4]], [0, 1, 2 / 3, 1])
    assert np.isnan(bins["confidence"][2])
    # 4 bins: [.5, .75) holds p = .5, .5 with y = 1, 0 (gap 0); [.75, 1] holds .75, .75 with y = 1, 1
    # (gap .25) → ECE = ½ · .25; and p = the positive rate everywhere → ECE 0
    assert expected_calibration_error(np.array([1, 0, 1, 1]), np.array([0.5, 0.5, 0.75, 0.75]), 4) == 0.25 / 2
    assert expected_calibration_error(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.0
    with pytest.raises(DataError, match="probabilities"):
        expected_calibration_error(np.array([1, 0]), np.array([0.5, 1.5]))


def test_roc_curve_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.4 * y, 2)  # rounded: many tied scores
    fpr, tpr = roc_curve(y, p)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y, p))


def test_cli_evaluate_ctr_plot_writes_roc_and_reliability_pngs(tmp_path):
    from typer.testing import CliRunner

    from funnelrec.cli import app

    cfg = tmp_path / "lr.yaml"
    cfg.write_text("trainer: {epochs: 1, lr: 0.01}\n")
    out = tmp_path / "plots"
    res = CliRunner().invoke(app, ["evaluate", "ctr", "--model", "lr", "--config", str(cfg), "--plot", str(out),
                                   "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert 0.0 < r["ece"] < 0.2  # the report carries ECE; LR after one epoch is roughly calibrated
    assert sorted(p.name for p in out.iterdir()) == ["lr_reliability.png", "lr_roc.png"]
    assert sorted(r["plots"]) == sorted(str(p) for p in out.iterdir())
    for png in out.iterdir():
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a real image, not an empty file
