import pytest

from funnelrec.core.errors import ConfigError
from funnelrec.eval.ctr import evaluate_ctr


def test_evaluate_ctr_protocol_lr_one_epoch(ml100k):
    r = evaluate_ctr(ml100k, "lr", {"trainer": {"epochs": 2, "lr": 0.01}})
    assert {"model", "auc", "gauc", "logloss", "train_samples_per_s", "epochs"} <= set(r)
    assert r["n_train"] == 80000 and r["n_test"] == 10000  # global RS 0.8/0.1/0.1
    assert r["auc"] > 0.7 and 0.5 < r["gauc"] < r["auc"] + 0.05
    assert r["logloss"] < 0.68  # base rate ~0.55 → constant log-loss 0.69
    assert r["epochs"] == 2


def test_evaluate_ctr_rejects_unknown_keys(ml100k):
    with pytest.raises(ConfigError, match="optimiser"):
        evaluate_ctr(ml100k, "lr", {"optimiser": {}})
