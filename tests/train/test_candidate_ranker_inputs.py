"""What the funnel's ranker feeds a model beyond the static fields (train/candidate_ranker.py,
features/behaviour.py), each checked against a computation written out here from the raw frames:

- the behaviour sequence of a training sample holds exactly its user's training events strictly
  before the sample's ts (no label, nothing after it); at serving the fit-time history plus the
  request's real-time history, the last L;
- the domain id of STAR/PEPNet is the user's `domain_column` value (0 = unknown user);
- free task names read their label columns, with per-task weights; a missing column is a
  ConfigError naming the task;
- watch-time weighted LR: exp(z) per feature cell = Σ_pos T / N_neg (the closed form);
- negative downsampling at rate r with the trained-in offset −log r: the predicted rate matches
  the hand-computed calibrated odds and the true base rate; without the offset it does not.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.data.dataset import TrainData
from funnelrec.features.spec import FeatureSpec
from funnelrec.models.ranking.common import build_ranker
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.funnel import Funnel
from funnelrec.train.calibration import downsample_negatives, downsampling_offset
from funnelrec.train.candidate_ranker import task_loss
from funnelrec.train.trainer import Trainer, TrainerConfig

L = 5


def _cfg(**rank) -> FunnelConfig:
    from candidate_ranker_world import tiny_funnel_config

    return tiny_funnel_config(1, **rank)


@pytest.fixture(scope="module")
def din(world):
    ds, split = world
    cfg = _cfg(model="din", seq_len=L, domain_column="gender",
               params={"embedding_dim": 4, "attention_hidden": [8], "mlp_hidden": [8]})
    builder = FunnelBuilder(cfg)
    funnel = builder.fit(ds, split.train, labels=split.valid)
    return builder, funnel


def _expected_sequence(train: pl.DataFrame, u: int, before: int | None) -> list[int]:
    rows = train.filter(pl.col("user_idx") == u)
    if before is not None:
        rows = rows.filter(pl.col("timestamp") < before)
    return rows.sort("timestamp", maintain_order=True)["item_idx"].to_list()[-L:]


def _label_sets(world, din):
    """(the fitted DIN ranker, [its real label set] with the ranker's match features)."""
    ds, split = world
    builder, funnel = din
    r = funnel.ranker_
    sets = [builder.label_set(funnel.channels_, TrainData(ds, split.train), split.valid)]
    for s in sets:
        s.match = r.match_
    return r, sets


def test_training_samples_hold_no_validation_user_and_no_seen_pair(world, din):
    """The held-out validation users give no training row at all (their random negatives
    included: they once leaked in), and no easy negative is a pair the user interacted with in
    the history or the label period."""
    ds, split = world
    r, sets = _label_sets(world, din)
    import copy
    import dataclasses

    many = copy.copy(r)  # the fitted ranker, drawing 50 easy negatives per positive
    many.config = dataclasses.replace(r.config, random_negatives=50)
    u, items, _, y, *_ = many._samples(sets, r.valid_users_, np.random.default_rng(0))
    assert len(r.valid_users_) >= 5 and not np.isin(u, r.valid_users_).any()
    seen = {(a, b) for a, b in split.train.select("user_idx", "item_idx").iter_rows()}
    seen |= {(a, b) for a, b in split.valid.select("user_idx", "item_idx").iter_rows()}
    neg = np.flatnonzero(y["ctr"] == 0)
    assert len(neg) > 1000
    # hard negatives are recall candidates (never in the history); easy ones are drawn outside it
    assert not any((int(a), int(b)) in seen for a, b in zip(u[neg], items[neg]))


def test_training_sequences_end_before_each_samples_ts(world, din):
    ds, split = world
    r, sets = _label_sets(world, din)
    u, items, X, y, w, ts, which = r._samples(sets, r.valid_users_, np.random.default_rng(0))
    t = r.batch(u, items, X)
    r._sequence_block(t, sets, split.train, u, items, ts, which)
    id_col = r.behaviour_.id_col
    idrow = r.item_rows_[:, id_col]
    # a pair's label time is its first label event (a repeated pair's rows are all in valid)
    first_ts = split.valid.group_by("user_idx", "item_idx").agg(pl.col("timestamp").min())
    label_ts = {(a, b): c for a, b, c in first_ts.iter_rows()}
    valid_ts = split.valid.group_by("user_idx").agg(pl.col("timestamp"))
    user_ts = dict(zip(valid_ts["user_idx"].to_list(), valid_ts["timestamp"].to_list()))
    pos = np.flatnonzero(y["ctr"] > 0)
    neg = np.flatnonzero(y["ctr"] == 0)
    assert len(pos) >= 30 and len(neg) >= 40
    for m in np.r_[pos[:40], neg[:40]]:
        a, b = int(u[m]), int(items[m])
        if y["ctr"][m] > 0:
            assert ts[m] == label_ts[(a, b)]  # a positive's cut is its own label event
        else:
            assert ts[m] in user_ts[a]  # a negative's cut is one of its user's label events
        want = _expected_sequence(split.train, a, int(ts[m]))
        got = t["seq"][m][t["seq_mask"][m]].tolist()
        assert got == idrow[want].tolist()
        assert t["target"][m] == idrow[b]
    # the cut matters: some sequences are shorter than the user's whole history would give
    full = [len(_expected_sequence(split.train, int(u[m]), None)) for m in pos[:40]]
    assert sum(int(t["seq_mask"][m].sum()) for m in pos[:40]) < sum(full)
    # a negative's cut is a *random* label event of its user (each of the user's label rows alike),
    # not a fixed one: over the users with ≥ 2 distinct label times, the share of negatives cut at
    # their user's latest (earliest) label time is the mean of p_u = the user's share of label rows
    # at that time (1/2 for two events), within 4 binomial sd — a fixed pick would give ~1 (or 0)
    varied = [m for m in neg if len(set(user_ts[int(u[m])])) >= 2]
    assert len(varied) >= 100
    for end in (max, min):
        at = np.array([end(user_ts[int(u[m])]) for m in varied])
        p = np.array([np.mean(np.array(user_ts[int(u[m])]) == x) for m, x in zip(varied, at)])
        sd = np.sqrt((p * (1 - p)).sum()) / len(varied)
        assert p.mean() < 0.75 and 4 * sd < 0.2
        assert abs(np.mean(ts[varied] == at) - p.mean()) <= 4 * sd, (end.__name__, np.mean(ts[varied] == at), p.mean())
    # and per such user the cuts of its m ≥ 15 negatives are not all one time (a random cut gives
    # that with P = Σ_t p_t^m, < 1e-3 for each of them)
    by_user: dict[int, list[int]] = {}
    for m in varied:
        by_user.setdefault(int(u[m]), []).append(int(ts[m]))
    many = {a: c for a, c in by_user.items() if len(c) >= 15}
    assert len(many) >= 5
    for a, c in many.items():
        times = np.array(user_ts[a])
        assert sum(np.mean(times == x) ** len(c) for x in set(user_ts[a])) < 1e-3
        assert len(set(c)) >= 2, (a, c)


def test_serving_sequence_is_fit_history_then_real_time_history(world, din):
    ds, split = world
    _, funnel = din
    r = funnel.ranker_
    users = np.array([3, 7])
    merged = funnel.candidates(users)
    fresh = [np.array([11, 12, 13]), None]
    u, items, X = r.features_.raw(merged, users, funnel.stats_.item_log_pop, funnel.stats_.user_log_act,
                                  fresh=fresh)
    rows = np.repeat(np.arange(2), [len(m) for m in merged])
    b = r.batch(u, items, X, fresh=fresh, rows=rows)
    idrow = r.item_rows_[:, r.behaviour_.id_col]
    want0 = (_expected_sequence(split.train, 3, None) + [11, 12, 13])[-L:]
    want1 = _expected_sequence(split.train, 7, None)
    first1 = len(merged[0])
    assert b["seq"][0][b["seq_mask"][0]].tolist() == idrow[want0].tolist()
    assert b["seq"][first1][b["seq_mask"][first1]].tolist() == idrow[want1].tolist()
    # the served scores read it: the same candidates score otherwise with the real-time history
    with_fresh = funnel.rank_tasks(merged, users, history=fresh)[0][0]
    without = funnel.rank_tasks(merged, users)[0][0]
    assert not np.allclose(with_fresh, without)
    # domain: the user's gender, 1..K sorted by value; 0 for an unknown user
    genders = sorted(ds.users["gender"].unique().to_list())
    assert b["domain"][0] == 1 + genders.index(ds.users["gender"][3])
    unknown = r.batch(np.array([-1]), np.array([0]), X[:1])
    assert unknown["domain"].tolist() == [0] and not unknown["seq_mask"].any()


def _record_training(monkeypatch) -> dict[str, list]:
    """Record what `CandidateRanker.fit` hands its Trainer: per fit the training tensors ("train")
    and the (user, item) of each of their rows ("pairs", from `_samples`, whose rows they are, in
    order). The fit itself runs unchanged."""
    import funnelrec.train.candidate_ranker as cr

    got: dict[str, list] = {"train": [], "pairs": []}

    class Recording(cr.Trainer):
        def fit(self, model, loss_fn, train, *args, **kwargs):
            got["train"].append({k: v.clone() for k, v in train.items()})
            return super().fit(model, loss_fn, train, *args, **kwargs)

    samples = cr.CandidateRanker._samples

    def recording_samples(self, *args, **kwargs):
        out = samples(self, *args, **kwargs)
        got["pairs"].append((out[0].copy(), out[1].copy()))
        return out

    monkeypatch.setattr(cr, "Trainer", Recording)
    monkeypatch.setattr(cr.CandidateRanker, "_samples", recording_samples)
    return got


def test_free_task_names_read_their_columns_with_weights(world, monkeypatch):
    ds, split = world
    def conv(df):  # a label column as a label map would write it (conversion: a long watch)
        return df.with_columns((pl.col("watch_time") > 60).cast(pl.Int8).alias("conversion"),
                               (pl.col("watch_time") / 10).alias("conv_weight"))

    train, valid = conv(split.train), conv(split.valid)
    cfg = _cfg(model="mmoe", tasks=["ctr", "conversion", "watch_time"], task_kinds={"watch_time": "watch_time"},
               weight_columns={"conversion": "conv_weight"}, task_weights={"watch_time": 0.1},
               params={"embedding_dim": 4, "n_experts": 2, "expert_hidden": [8], "tower_hidden": [4]})
    builder = FunnelBuilder(cfg)
    got = _record_training(monkeypatch)
    funnel = builder.fit(ds, train, labels=valid)
    r = funnel.ranker_
    # what the Trainer trained on, per row, against the label frame: y = the task's label of the
    # pair, its weight = the weight column (conversion: watch/10; watch time: T) on the task's
    # positives, 1 on everything else; ctr has no weight tensor at all
    (trained,), ((tu, ti),) = got["train"], got["pairs"]
    by_pair: dict[tuple[int, int], list[float]] = {}
    for a, b, wt in valid.select("user_idx", "item_idx", "watch_time").iter_rows():
        by_pair.setdefault((a, b), []).append(wt)

    def expect(a, b):  # (ctr, conversion, its weight, watch time, its weight) of a training row
        wts = by_pair.get((int(a), int(b)))
        if wts is None:  # not a label pair: a negative of every task, weight 1
            return 0.0, 0.0, 1.0, 0.0, 1.0
        conv, watch = [x / 10 for x in wts if x > 60], [x for x in wts if x > 0]  # a pair's positive rows
        return 1.0, float(bool(conv)), max(conv, default=1.0), float(bool(watch)), max(watch, default=1.0)

    want = np.array([expect(a, b) for a, b in zip(tu, ti)])
    assert len(trained["label_ctr"]) == len(tu) and "weight_ctr" not in trained
    for c, key in enumerate(["label_ctr", "label_conversion", "weight_conversion", "label_watch_time",
                             "weight_watch_time"]):
        np.testing.assert_allclose(trained[key].numpy(), want[:, c], rtol=1e-6, err_msg=key)
    n_conv = want[:, 1].sum()
    assert 10 <= n_conv < want[:, 3].sum() and len(tu) > 10 * n_conv  # both kinds of row, for each task
    s = builder.label_set(funnel.channels_, TrainData(ds, train), valid)
    table = r._label_table(s)
    I = ds.n_items
    # per label pair: its rows' max (a repeated pair's rows are all in valid); the repeated ones
    # first, and one of them with two rows that watched (a sum would differ there)
    pairs = sorted(by_pair, key=lambda p: -len(by_pair[p]))
    assert len(by_pair[pairs[0]]) >= 2
    assert any(sum(x > 0 for x in by_pair[p]) >= 2 for p in pairs[:30])
    for a, b in pairs[:30]:
        k = np.searchsorted(table["key"], a * I + b)
        _, conv, w_conv, watch, w_watch = expect(a, b)
        assert table["y_ctr"][k] == 1.0
        assert table["y_conversion"][k] == conv and table["w_conversion"][k] == pytest.approx(w_conv)
        assert table["y_watch_time"][k] == watch and table["w_watch_time"][k] == pytest.approx(w_watch)
    rec = funnel.recommend(user_idx=3, k=5)
    assert set(rec.task_scores) == {"ctr", "conversion", "watch_time"}
    served = r.predict(rec.task_scores)
    np.testing.assert_allclose(served["watch_time"], np.exp(rec.task_scores["watch_time"].astype(np.float64)))
    assert ((served["ctr"] > 0) & (served["ctr"] < 1)).all()
    with pytest.raises(ConfigError, match="task 'purchase' has no label column 'purchase'"):
        r.config.task_label("purchase", split.valid)


def test_a_task_without_a_positive_among_the_candidates_is_refused_naming_it(world):
    """A conversion column that is 1 only on pairs no channel may recall (its items are all in the
    users' training history) leaves the task no positive: one DataError naming it and its column."""
    from funnelrec.core.errors import DataError

    ds, split = world
    seen = split.train.select("user_idx", "item_idx").unique().with_columns(pl.lit(1, pl.Int8).alias("buy"))
    # valid rows of seen pairs do not exist (pairs are split whole), so the label set's conversions
    # are all off-candidate: the same pairs, labelled in the training part, moved over to valid
    valid = pl.concat([split.valid.with_columns(pl.lit(0, pl.Int8).alias("buy")),
                       split.train.join(seen, on=["user_idx", "item_idx"]).head(200)], how="diagonal_relaxed")
    cfg = _cfg(tasks=["ctr", "conversion"], task_columns={"conversion": "buy"})
    train = split.train.with_columns(pl.lit(0, pl.Int8).alias("buy"))
    with pytest.raises(DataError, match=r"task 'conversion' has no positive among the [\d,]+ recall candidates.*'buy'"):
        FunnelBuilder(cfg).fit(ds, train, labels=valid)
    ok = valid.with_columns(pl.when(pl.col("buy").is_null() | (pl.col("buy") == 0)).then(
        (pl.col("watch_time") > 60).cast(pl.Int8)).otherwise(pl.col("buy")).alias("buy"))
    FunnelBuilder(cfg).fit(ds, train, labels=ok)  # with positives on candidates: trains


def test_a_single_task_model_with_two_tasks_is_one_model_per_task_and_round_trips(world, tmp_path):
    ds, split = world
    cfg = _cfg(model="deepfm", tasks=["ctr", "watch_time"], task_kinds={"watch_time": "watch_time"},
               params={"embedding_dim": 4, "hidden": [8]})
    funnel = FunnelBuilder(cfg).fit(ds, split.train, labels=split.valid)
    m = funnel.ranker_.model_
    assert [type(x).registered_name for x in m.models] == ["deepfm", "deepfm"]
    users = np.array([0, 5, 9])
    a = funnel.recommend_batch(users, 10)
    back = Funnel.load(funnel.save(tmp_path / "art"))
    b = back.recommend_batch(users, 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


def _lr(n_rows: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_ranker("lr", FeatureSpec(n_embeddings=n_rows + 1, n_fields=1), {})


def _train(model, batch, loss, epochs=300):
    n = len(batch["sparse"])
    Trainer(TrainerConfig(epochs=epochs, batch_size=n, lr=0.05, num_threads=1)).fit(model, loss, batch)
    model.eval()
    with torch.inference_mode():
        return model({"sparse": torch.arange(1, 4).reshape(-1, 1)})


def test_watch_time_weighted_lr_matches_the_closed_form():
    rng = np.random.default_rng(0)
    n = 6000
    cell = rng.integers(1, 4, n)
    click = rng.random(n) < np.array([0, 0.05, 0.1, 0.2])[cell]
    watch = np.where(click, rng.gamma(2.0, np.array([0, 30.0, 60.0, 10.0])[cell]), 0.0)
    # the weighted LR as the ranker trains a watch-time task: label = watched, weight = T | 1 (that
    # the ranker's Trainer gets exactly these tensors: test_free_task_names_read_their_columns_with_weights)
    batch = {"sparse": torch.from_numpy(cell.reshape(-1, 1)), "label_ctr": torch.from_numpy(click.astype(np.float32)),
             "weight_ctr": torch.from_numpy(np.where(click, watch, 1.0).astype(np.float32))}
    z = _train(_lr(3), batch, task_loss(("ctr",)), epochs=400)["ctr"].double().numpy()
    for c in (1, 2, 3):
        hand = watch[(cell == c) & click].sum() / ((cell == c) & ~click).sum()  # Σ_pos T / N_neg
        assert np.exp(z[c - 1]) == pytest.approx(hand, rel=0.02)


def test_negative_downsampling_is_calibrated_by_the_offset():
    rng = np.random.default_rng(1)
    n, r = 60_000, 0.1
    cell = rng.integers(1, 4, n)
    true = np.array([0, 0.02, 0.05, 0.15])
    y = (rng.random(n) < true[cell]).astype(np.float32)
    keep = downsample_negatives(y, r, seed=3)
    cs, ys = cell[keep], y[keep]
    batch = {"sparse": torch.from_numpy(cs.reshape(-1, 1)), "label_ctr": torch.from_numpy(ys)}
    calibrated = torch.sigmoid(_train(_lr(3), batch, task_loss(("ctr",), logit_offset=downsampling_offset(r)))["ctr"])
    raw = torch.sigmoid(_train(_lr(3), batch, task_loss(("ctr",)))["ctr"])
    for c in (1, 2, 3):
        pos, kept_neg = ys[cs == c].sum(), (ys[cs == c] == 0).sum()
        hand = pos * r / (pos * r + kept_neg)  # odds_sampled · r
        assert float(calibrated[c - 1]) == pytest.approx(hand, rel=0.02)
        assert float(raw[c - 1]) == pytest.approx(pos / (pos + kept_neg), rel=0.02)
        se = np.sqrt(true[c] * (1 - true[c]) / ((cell == c).sum() * r))
        assert abs(float(calibrated[c - 1]) - true[c]) < 4 * se + 0.1 * true[c]
        assert float(raw[c - 1]) > 3 * true[c]  # uncorrected: the odds are 1/r too high


def test_the_ranker_downsamples_and_serves_calibrated_probabilities(world):
    """The ranker with negative_keep_rate r: its samples keep ~r of the negatives, and its mean
    served probability on the full sample population matches that population's positive share
    (an LR at its optimum reproduces the base rate; without the offset it would be ~1/r too high
    in odds)."""
    ds, split = world
    base = dict(model="lr", epochs=30, patience=100, lr=0.02, batch_size=32)
    full = FunnelBuilder(_cfg(**base)).fit(ds, split.train, labels=split.valid).ranker_
    down_f = FunnelBuilder(_cfg(**base, negative_keep_rate=0.25)).fit(ds, split.train, labels=split.valid)
    down = down_f.ranker_
    assert down.n_examples_ < full.n_examples_
    s = FunnelBuilder(_cfg(**base)).label_set(down_f.channels_, TrainData(ds, split.train), split.valid)
    s.match = down.match_
    u, items, X, y, *_ = full._samples([s], full.valid_users_, np.random.default_rng(full.config.seed))
    neg_full = int((y["ctr"] == 0).sum())
    n_pos = int(y["ctr"].sum())
    assert down.n_examples_ - n_pos == pytest.approx(0.25 * neg_full, rel=0.1)
    with torch.inference_mode():
        p = down.predict({"ctr": down.model_(down.batch(u, items, X))["ctr"].numpy()})["ctr"]
    rate = n_pos / len(u)
    assert p.mean() == pytest.approx(rate, rel=0.25)
    odds = p / (1 - p) / 0.25  # what it would serve without the offset
    assert (odds / (1 + odds)).mean() > 2.5 * rate
