import json
import subprocess
import sys

import numpy as np
import pytest

from funnelrec.core.errors import ArtifactError, ConfigError, UnknownComponentError
from funnelrec.core.types import PAD
from funnelrec.data.dataset import interactions_csr
from funnelrec.pipeline.builder import build_channel
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.pipeline.offline import drop_excluded, evaluate_funnel


def test_batch_equals_one_by_one(fitted_funnel):
    users = np.array([0, 5, 195, 942])
    items, scores = fitted_funnel.recommend_batch(users, 10)
    for row, u in enumerate(users):
        rec = fitted_funnel.recommend(user_idx=int(u), k=10)
        np.testing.assert_array_equal(rec.items, items[row])
        np.testing.assert_allclose(rec.scores, scores[row], rtol=1e-5)


def test_answers_exclude_history_and_respect_exclusion(fitted_funnel, ml100k, ml100k_split):
    users = np.arange(ml100k.n_users)
    valid = interactions_csr(ml100k_split.valid, ml100k.n_users, ml100k.n_items)
    items, _ = fitted_funnel.recommend_batch(users, 10, exclude=valid)
    hist = fitted_funnel.history_
    assert (items != PAD).all()
    assert np.asarray(hist[np.repeat(users, 10), items.ravel()]).sum() == 0
    assert np.asarray(valid[np.repeat(users, 10), items.ravel()]).sum() == 0


def test_attribution_names_every_recalling_channel(fitted_funnel):
    rec = fitted_funnel.recommend(user_idx=10, k=20)
    batches = fitted_funnel.recall(np.array([10]))
    by_channel = {b.channel: set(b.items[0][b.items[0] != PAD].tolist()) for b in batches}
    for item, chans in zip(rec.items.tolist(), rec.channels):
        assert set(chans) == {c for c, s in by_channel.items() if item in s}


def test_save_load_round_trip(fitted_funnel, tmp_path):
    p = tmp_path / "f"
    fitted_funnel.save(p)
    assert (p / "manifest.json").exists() and not list(p.rglob("*.pkl"))
    again = Funnel.load(p)
    a, sa = fitted_funnel.recommend_batch(np.arange(50), 10)
    b, sb = again.recommend_batch(np.arange(50), 10)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)


def test_old_pickle_and_missing_artifacts_are_clear_errors(tmp_path):
    p = tmp_path / "f.pkl"
    p.write_bytes(b"funnelrec-funnel-v1\n" + b"\x80\x05garbage")
    with pytest.raises(ArtifactError, match="re-train|convert"):
        Funnel.load(p)
    with pytest.raises(ArtifactError, match="not found|no such|missing"):
        Funnel.load(tmp_path / "missing")


def test_report_shape_and_itemcf_quality(ml100k, ml100k_split, fitted_funnel, small_funnel_config):
    r = evaluate_funnel(ml100k, small_funnel_config, fitted=(fitted_funnel, ml100k_split))
    assert r["protocol"] == "recbole-rs-811" and r["users"] == 943
    assert set(r["channels"]) == {"itemcf", "hot"}
    assert set(r["funnel"]) == {"recall@10", "ndcg@10", "hit@10", "mrr@10"}
    # RecBole ItemKNN on the same protocol: R@10 0.247; Pop NDCG@10 0.101
    assert r["channels"]["itemcf"]["recall@10"] >= 0.24
    assert r["channels"]["hot"]["ndcg@10"] > 0.09
    assert r["channels"]["itemcf"]["recall@200"] > r["channels"]["itemcf"]["recall@10"]
    assert r["merged"]["recall@120"] >= r["channels"]["itemcf"]["recall@10"]


def test_drop_excluded_keeps_order():
    import scipy.sparse as sp

    from funnelrec.core.types import CandidateBatch

    b = CandidateBatch("x", np.array([[4, 2, 7, -1]]), np.array([[3.0, 2.0, 1.0, -np.inf]], np.float32))
    ex = sp.csr_matrix(([1], ([0], [2])), shape=(1, 8))
    np.testing.assert_array_equal(drop_excluded(b, ex, np.array([0]), 3), [[4, 7, -1]])


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown key 'chanels'"):
        FunnelConfig.from_dict({"recall": {"chanels": []}})
    with pytest.raises(ConfigError, match="'swing' is not a configured channel"):
        FunnelConfig.from_dict({"recall": {"channels": [{"name": "hot"}], "merge": {"quotas": {"swing": 3}}}})
    with pytest.raises(UnknownComponentError, match="known: .*hot"):
        from funnelrec.pipeline.config import ChannelSpec

        build_channel(ChannelSpec("nosuch"))


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "funnelrec.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_unknown_dataset_exits_2_with_one_line():
    p = _cli("data", "--dataset", "nope")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "unknown dataset 'nope'" in p.stderr


def test_cli_bad_config_key_exits_2(tmp_path):
    cfg = tmp_path / "f.yaml"
    cfg.write_text("recall:\n  chanels: []\n")
    p = _cli("evaluate", "funnel", "--config", str(cfg), "--json")
    assert p.returncode == 2 and "unknown key 'chanels'" in p.stderr


def test_cli_evaluate_funnel_json(tmp_path):
    cfg = tmp_path / "f.yaml"
    cfg.write_text("recall:\n  channels: [{name: itemcf, n: 60}, {name: hot, n: 30}]\n  merge: {total: 80}\nrank: {epochs: 2}\n")
    p = _cli("evaluate", "funnel", "--dataset", "movielens-100k", "--config", str(cfg), "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["protocol"] == "recbole-rs-811"
    assert {"recall@10", "ndcg@10", "recall@200"} <= set(report["channels"]["itemcf"])
    assert 0 < report["funnel"]["ndcg@10"] < 1


def test_experiment_parameters_change_one_request_and_fit_time_ones_are_refused(fitted_funnel):
    """Layered experiments reach the served funnel per request: a channel switched off, a merge
    quota, a smaller merge total, a re-rank; a parameter fixed at fit time is a named error."""
    from funnelrec.core.errors import ConfigError
    from funnelrec.pipeline.funnel import build_plan, request_params
    from funnelrec.recall.base import RecallContext

    f = fitted_funnel

    def ctx(**params):
        return RecallContext(extra={"experiment_params": params})

    base = f.recommend(user_idx=10, k=30, debug=True)
    assert any("hot" in ch for ch in base.channels) and base.debug["candidates"] == 120
    off = f.recommend(user_idx=10, k=30, context=ctx(**{"recall.channels.hot.n": 0}), debug=True)
    assert all(ch == ["itemcf"] for ch in off.channels) and off.debug["per_channel"]["hot"] == 0
    small = f.recommend(user_idx=10, k=30, context=ctx(**{"recall.merge.total": 50}), debug=True)
    assert small.debug["candidates"] == 50
    # quota: the snake merge takes at most this many from hot
    q = f.candidates(np.array([10]), ctx(**{"recall.merge.quotas.hot": 5}))[0]
    hot_bit = 1 << q.channels.index("hot")
    only_hot = ((q.sources & hot_bit) != 0) & ((q.sources & ~np.uint64(hot_bit)) == 0)
    assert only_hot.sum() <= 5 < (((f.candidates(np.array([10]))[0].sources & hot_bit) != 0).sum())
    # the same request without parameters is unchanged (plans are per request, not global)
    np.testing.assert_array_equal(f.recommend(user_idx=10, k=30).items, base.items)
    assert "prerank.keep" not in request_params(f.config, ("ctr",))  # no pre-ranker to cut with
    with pytest.raises(ConfigError, match="'rank.model' cannot change per request"):
        build_plan(f.config, {"rank.model": "fm"}, ("ctr",))
    with pytest.raises(ConfigError, match="'recall.channels.swing.n'"):  # not a channel of this funnel
        f.recommend(user_idx=10, k=5, context=ctx(**{"recall.channels.swing.n": 10}))


def test_service_refuses_experiments_the_funnel_cannot_run(fitted_funnel):
    from funnelrec.core.config import from_dict
    from funnelrec.core.errors import ConfigError
    from funnelrec.experiments import ExperimentPlatform
    from funnelrec.experiments.config import ExperimentsConfig
    from funnelrec.pipeline.service import RecommenderService

    exp = {"layers": [{"name": "rank"}], "experiments": [{"name": "new_model", "layer": "rank", "traffic": 0.5,
           "variants": [{"name": "c"}, {"name": "t", "params": {"rank.model": "deepfm"}}]}]}
    with pytest.raises(ConfigError, match="unknown parameter 'rank.model'"):
        RecommenderService(fitted_funnel, experiments=ExperimentPlatform(from_dict(ExperimentsConfig, exp)))


def test_the_evaluate_table_quotes_recbole_only_for_movielens(capsys):
    from funnelrec.cli import _print_table

    m = {"recall@10": 0.2, "ndcg@10": 0.3}
    report = {"protocol": "recbole-rs-811", "dataset": "shop", "users": 3, "channels": {"itemcf": m},
              "merged": {**m, "size": 100}, "funnel": m}
    _print_table(report)
    assert "RecBole" not in capsys.readouterr().out
    _print_table({**report, "dataset": "movielens-100k"})
    assert "RecBole 1.2.1, same protocol" in capsys.readouterr().out
