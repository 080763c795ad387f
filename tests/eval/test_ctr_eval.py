import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

import funnelrec.eval.ctr as ctr_module
from funnelrec.core.errors import ConfigError
from funnelrec.data.splits import random_split_global
from funnelrec.eval.ctr import evaluate_ctr


def _record_predictions(monkeypatch) -> list[tuple[dict, str, np.ndarray]]:
    """Wraps the module's `predict`: every call's (batch, head, probabilities) is appended."""
    calls, real = [], ctr_module.predict

    def spy(model, batch, task="ctr", batch_size=8192):
        p = real(model, batch, task, batch_size)
        calls.append((batch, task, p))
        return p

    monkeypatch.setattr(ctr_module, "predict", spy)
    return calls


def _test_rows(ml100k):
    """The protocol's test split (global random 0.8/0.1/0.1, seed 2020): (users, ratings, gender M?)."""
    test = random_split_global(ml100k.interactions, seed=2020).test
    users = test["user_idx"].to_numpy()
    male = (ml100k.users["gender"].to_numpy() == "M")[users]
    return users, test["rating"].to_numpy(), male


def _test_scores(calls, y_ctr, head, n=1):
    """The probabilities of the `n` `predict` calls on the test batch (label = y_ctr) with `head`."""
    out = [p for batch, h, p in calls if h == head and np.array_equal(batch["label"].numpy(), y_ctr)]
    assert len(out) == n, f"{len(out)} predictions of head {head!r} on the test rows, expected {n}"
    return out


def _hand_metrics(y, p, users):
    """AUC (scikit-learn), GAUC = Σ_u n_u·AUC_u / Σ_u n_u over users with both classes (n_u: the
    user's test rows; AUC_u by counting the user's (positive, negative) pairs, ties ½), log-loss
    (scikit-learn, p clipped to [1e-7, 1 − 1e-7]) and ECE over ten equal-width bins
    [b/10, (b+1)/10) (the last closed): Σ_b n_b/N · |mean y_b − mean p_b|."""
    aucs, weights = [], []
    order = np.argsort(users, kind="stable")
    for rows in np.split(order, np.flatnonzero(np.diff(users[order])) + 1):
        pos, neg = p[rows][y[rows] == 1], p[rows][y[rows] == 0]
        if len(pos) and len(neg):
            aucs.append(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))
            weights.append(len(rows))
    ece = 0.0
    for b in range(10):
        m = (p >= b / 10) & ((p < (b + 1) / 10) if b < 9 else (p <= 1.0))
        if m.any():
            ece += m.sum() / len(p) * abs(y[m].mean() - p[m].mean())
    return {"auc": roc_auc_score(y, p), "gauc": float(np.average(aucs, weights=weights)),
            "logloss": log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]), "ece": ece}


def _assert_block(block, y, p, users, male=None):
    for k, want in _hand_metrics(y, p, users).items():
        assert block[k] == pytest.approx(want, abs=1e-9), k
    if male is not None:  # domain codes: F = 0, M = 1 (sorted values)
        want = {"F": roc_auc_score(y[~male], p[~male]), "M": roc_auc_score(y[male], p[male])}
        assert block["domain_auc"].keys() == want.keys()
        for d, v in want.items():
            assert block["domain_auc"][d] == pytest.approx(v, abs=1e-9), d


def test_evaluate_ctr_protocol_lr_two_epochs(ml100k, monkeypatch):
    calls = _record_predictions(monkeypatch)
    r = evaluate_ctr(ml100k, "lr", {"trainer": {"epochs": 2, "lr": 0.01}})
    assert {"model", "auc", "gauc", "logloss", "train_samples_per_s", "epochs"} <= set(r)
    assert r["n_train"] == 80000 and r["n_test"] == 10000  # global RS 0.8/0.1/0.1
    assert r["auc"] > 0.7 and 0.5 < r["gauc"] < r["auc"] + 0.05
    assert r["logloss"] < 0.68  # base rate ~0.55 → constant log-loss 0.69
    assert r["epochs"] == 2
    # the reported metrics are those of the test rows' predictions, recomputed independently
    users, rating, _ = _test_rows(ml100k)
    y = (rating >= 4).astype(np.float64)
    (p,) = _test_scores(calls, y, "ctr")
    _assert_block(r, y, p, users)


def test_evaluate_ctr_rejects_unknown_keys(ml100k):
    with pytest.raises(ConfigError, match="optimiser"):
        evaluate_ctr(ml100k, "lr", {"optimiser": {}})


# ---- multi-task protocol (ctr = rating ≥ 4, like = rating = 5, domain = gender) ----

LR_1EPOCH = {"trainer": {"epochs": 1, "lr": 0.01}}


def test_task_labels_like_is_exactly_rating_5():
    import numpy as np
    import polars as pl

    from funnelrec.eval.ctr import task_labels

    frame = pl.DataFrame({"rating": [1.0, 3.0, 4.0, 4.5, 5.0, 5.0, 2.0]})
    y = task_labels(frame, ("ctr", "like"))
    np.testing.assert_array_equal(y["like"], [0, 0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(y["ctr"], [0, 0, 1, 1, 1, 1, 0])
    assert y["like"].dtype == np.float32
    with pytest.raises(ConfigError, match="unknown CTR tasks"):
        task_labels(frame, ("ctr", "watch"))


def test_domain_codes_follow_the_users_gender(ml100k):
    import numpy as np

    from funnelrec.core.errors import DataError
    from funnelrec.eval.ctr import domain_codes

    codes, names = domain_codes(ml100k, "gender")
    assert names == ["F", "M"]
    np.testing.assert_array_equal(codes, (ml100k.users["gender"].to_numpy() == "M").astype(np.int64))
    with pytest.raises(DataError, match="shoe_size"):
        domain_codes(ml100k, "shoe_size")


def test_multitask_single_task_model_reproduces_the_ctr_protocol(ml100k, monkeypatch):
    """A single-task model under --tasks trains one model per task; its "ctr" block must equal
    the plain single-task protocol (same seed, same label), and "like" is scored on rating = 5."""
    single = evaluate_ctr(ml100k, "lr", LR_1EPOCH)
    calls = _record_predictions(monkeypatch)
    multi = evaluate_ctr(ml100k, "lr", LR_1EPOCH, tasks=("ctr", "like"))
    assert set(multi["tasks"]) == {"ctr", "like"}
    ctr, like = multi["tasks"]["ctr"], multi["tasks"]["like"]
    for k in ("auc", "gauc", "logloss", "valid_auc"):
        assert ctr[k] == pytest.approx(single[k], abs=1e-12), k
    assert not ctr["trained_jointly"] and not like["trained_jointly"]
    test = random_split_global(ml100k.interactions, seed=2020).test
    assert like["positive_rate"] == pytest.approx(float((test["rating"].to_numpy() == 5).mean()))
    assert ctr["positive_rate"] == pytest.approx(float((test["rating"].to_numpy() >= 4).mean()))
    assert like["auc"] > 0.7 and like["auc"] != ctr["auc"]
    assert set(like["domain_auc"]) == {"F", "M"} and all(0.6 < v < 0.95 for v in like["domain_auc"].values())
    # the overall AUC is not the mean of the per-domain ones, but lies near them
    assert min(like["domain_auc"].values()) - 0.03 < like["auc"] < max(like["domain_auc"].values()) + 0.03
    assert multi["n_train"] == 80000 and multi["n_test"] == 10000 and multi["domains"] == ["F", "M"]
    assert np.isfinite(like["logloss"]) and like["logloss"] < 0.69  # base rate 0.21 → constant 0.51
    # each block from its own model's test predictions (one model per task, each read at "ctr")
    users, rating, male = _test_rows(ml100k)
    p_ctr, p_like = _test_scores(calls, (rating >= 4).astype(np.float64), "ctr", n=2)
    _assert_block(ctr, (rating >= 4).astype(np.float64), p_ctr, users, male)
    _assert_block(like, (rating == 5).astype(np.float64), p_like, users, male)


def test_multitask_model_result_has_one_block_per_task(ml100k, monkeypatch):
    cfg = {"model": {"embedding_dim": 4, "tower_hidden": [16]}, "trainer": {"epochs": 1, "lr": 0.005}}
    calls = _record_predictions(monkeypatch)
    r = evaluate_ctr(ml100k, "esmm", cfg, tasks=("ctr", "like"))
    assert r["protocol"] == "ctr-multitask" and set(r["tasks"]) == {"ctr", "like"}
    ctr, like = r["tasks"]["ctr"], r["tasks"]["like"]
    for block in (ctr, like):
        assert {"auc", "gauc", "logloss", "domain_auc", "epochs", "valid_auc"} <= set(block)
        assert block["trained_jointly"] and block["auc"] > 0.6
    # one joint fit: same early-stopping score (mean valid AUC over the tasks), same model size
    assert ctr["valid_auc"] == like["valid_auc"] and ctr["n_params"] == like["n_params"]
    assert ctr["auc"] != like["auc"]
    # one joint model, each block scored from its own task's head on the test rows
    users, rating, male = _test_rows(ml100k)
    y_ctr = (rating >= 4).astype(np.float64)
    (p_ctr,) = _test_scores(calls, y_ctr, "ctr")
    (p_like,) = _test_scores(calls, y_ctr, "like")
    assert not np.allclose(p_ctr, p_like)  # pCTCVR < pCTR: the two heads differ
    _assert_block(ctr, y_ctr, p_ctr, users, male)
    _assert_block(like, (rating == 5).astype(np.float64), p_like, users, male)


def test_esmm_needs_nested_task_order(ml100k):
    with pytest.raises(ConfigError, match="nested"):
        evaluate_ctr(ml100k, "esmm", {"trainer": {"epochs": 1}}, tasks=("like", "ctr"))
    with pytest.raises(ConfigError, match="distinct"):
        evaluate_ctr(ml100k, "mmoe", {}, tasks=("ctr", "ctr"))


def test_esmm_like_output_is_pctr_times_pcvr():
    """out["like"] = logit(σ(a)·σ(b)) with a, b the two towers' logits; checked against the
    towers read directly, in float64, including saturated logits."""
    import torch

    from funnelrec.models.ranking.base import FeatureSpec
    from funnelrec.models.ranking.common import build_ranker
    from funnelrec.models.ranking.din import field_inputs

    spec = FeatureSpec(n_embeddings=30, n_fields=3, n_dense=1, tasks=("ctr", "like"))
    torch.manual_seed(0)
    m = build_ranker("esmm", spec, {"embedding_dim": 4, "tower_hidden": [8]}).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"sparse": torch.randint(1, 30, (64, 3), generator=g), "dense": torch.rand(64, 1, generator=g)}
    out = m(batch)
    ab = m.towers(field_inputs(m.embedding, batch, spec)).squeeze(-1).double()
    p_ctr, p_cvr = torch.sigmoid(ab[:, 0]), torch.sigmoid(ab[:, 1])
    torch.testing.assert_close(torch.sigmoid(out["ctr"].double()), p_ctr)
    torch.testing.assert_close(torch.sigmoid(out["like"].double()), p_ctr * p_cvr, atol=1e-6, rtol=1e-5)
    assert bool((out["like"] <= out["ctr"] + 1e-5).all())  # pCTCVR ≤ pCTR
    from funnelrec.models.ranking.esmm import product_logit

    a = torch.tensor([-30.0, 0.0, 8.0, 20.0])
    b = torch.tensor([5.0, 0.0, -3.0, 20.0])
    want = torch.logit(torch.sigmoid(a.double()) * torch.sigmoid(b.double()))
    got = product_logit(a, b).double()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[:3], want[:3], atol=1e-3, rtol=1e-4)


def test_cli_evaluate_ctr_tasks_prints_one_block_per_task(tmp_path):
    import json

    from typer.testing import CliRunner

    from funnelrec.cli import app

    cfg = tmp_path / "lr.yaml"
    cfg.write_text("trainer: {epochs: 1, lr: 0.01}\n")
    res = CliRunner().invoke(app, ["evaluate", "ctr", "--model", "lr", "--config", str(cfg),
                                   "--tasks", "ctr,like", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert set(r["tasks"]) == {"ctr", "like"} and r["domain"] == "gender"
