"""Every registered ranking model (RANKERS.names(), cases in tests/zoo_cases.py) learns the
planted CTR signal, and every feature-interaction model learns a pure pairwise interaction; the
shared contract (fixed seed, batch = one-by-one, save/load) is in tests/contracts/test_rankers.py."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from funnelrec.core.errors import ConfigError, UnknownComponentError
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.common import build_ranker
from funnelrec.train.trainer import Trainer, TrainerConfig
from zoo_cases import (  # tests/ is on sys.path
    build_case,
    case_ids,
    ctr_loss,
    ctr_oracle_logit,
    make_ctr_problem,
    require_case,
    split_ctr_problem,
    zoo_cases,
)

CASES = zoo_cases()


N, N_TRAIN = 3000, 2400
# oracle − this (0.72): the models reached 0.752 (lr; a[x0] + b[x1] alone ranks at 0.753) to
# 0.803 (fm) against the oracle's 0.872. Shuffling field 0 across the test rows costs the
# non-sequence models 0.12–0.19 (below the bar); what this bar cannot see, a lost interaction,
# `test_learns_a_pure_pairwise_interaction` checks
ORACLE_MARGIN = 0.15


@pytest.fixture(scope="module")
def problem():
    return split_ctr_problem(N, N_TRAIN)


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=case_ids(CASES))
def test_learns_the_planted_signal(name, cfg, problem):
    """Held-out rows, click task of every model: scikit-learn's AUC within ORACLE_MARGIN of the
    true logit's AUC, and log-loss below the base rate's."""
    spec, train, test = problem
    model = build_case(name, require_case(name, cfg), spec, train)
    Trainer(TrainerConfig(epochs=6, batch_size=256, lr=1e-2, seed=0, num_threads=1)).fit(model, ctr_loss, train)
    with torch.inference_mode():
        out = model(test)
    click = "ctr" if "ctr" in out else next(iter(out))
    assert out[click].shape == (len(test["label"]),)
    p = torch.sigmoid(out[click]).double().numpy()
    y = test["label"].numpy()
    oracle = roc_auc_score(y, ctr_oracle_logit(N)[N_TRAIN:].numpy())
    assert roc_auc_score(y, p) > oracle - ORACLE_MARGIN, oracle
    assert log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)) < log_loss(y, np.full_like(p, y.mean()))


# ---------------------------------------------------------------- a pure pairwise interaction

INTERACTION_MODELS = ("fm", "ffm", "deepfm", "widedeep", "dcn", "dcnv2", "gdcn", "xdeepfm", "fibinet", "lhuc",
                      "recyclenet", "neural_interaction", "all_interaction", "mmcn", "gbdt_lr")
INTERACTION_CASES = [(n, c) for n, c in CASES if n in INTERACTION_MODELS]
CARD = 8


@pytest.fixture(scope="module")
def interaction_problem():
    """4 fields of 8 values, logit = 2·u[x2]·v[x3] with u, v of mean 0 and unit variance: no field
    has a main effect, so an additive model (scikit-learn's one-hot logistic regression) stays
    near 0.5 while the true logit ranks at 0.81. (spec, train, test, oracle AUC)."""
    rng = np.random.default_rng(0)
    n, n_train = 6000, 4000
    codes = rng.integers(0, CARD, (n, 4))
    u, v = rng.normal(size=CARD), rng.normal(size=CARD)
    u, v = (u - u.mean()) / u.std(), (v - v.mean()) / v.std()
    logit = 2.0 * u[codes[:, 2]] * v[codes[:, 3]]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    batch = {"sparse": torch.from_numpy(codes + 1 + CARD * np.arange(4)),
             "dense": torch.from_numpy(rng.random((n, 2)).astype(np.float32)), "label": torch.from_numpy(y)}
    train, test = ({k: t[:n_train] for k, t in batch.items()}, {k: t[n_train:] for k, t in batch.items()})
    oracle = roc_auc_score(y[n_train:], logit[n_train:])
    onehot = OneHotEncoder().fit(codes[:n_train])
    additive = LogisticRegression(max_iter=1000).fit(onehot.transform(codes[:n_train]), y[:n_train])
    assert roc_auc_score(y[n_train:], additive.predict_proba(onehot.transform(codes[n_train:]))[:, 1]) < 0.6
    spec = FeatureSpec(n_embeddings=4 * CARD + 1, n_fields=4, n_dense=2, field_names=("user_id", "item_id", "f2", "f3"))
    return spec, train, test, oracle


def test_every_interaction_model_has_a_case():
    assert {n for n, _ in INTERACTION_CASES} == set(INTERACTION_MODELS)


@pytest.mark.parametrize(("name", "cfg"), INTERACTION_CASES, ids=case_ids(INTERACTION_CASES))
def test_learns_a_pure_pairwise_interaction(name, cfg, interaction_problem):
    """AUC within 0.05 of the oracle's (measured over data seeds 0–2: within 0.022 for every case),
    and shuffling x3 across the test rows drops it to chance (measured 0.49–0.53): a model whose
    interaction part loses a field (FM crossing x0..x2 only: 0.50–0.52) fails."""
    spec, train, test, oracle = interaction_problem
    model = build_case(name, cfg, spec, train)
    Trainer(TrainerConfig(epochs=6, batch_size=256, lr=1e-2, seed=0, num_threads=1)).fit(model, ctr_loss, train)
    y = test["label"].numpy()
    shuffled = test["sparse"].clone()
    shuffled[:, 3] = shuffled[torch.from_numpy(np.random.default_rng(1).permutation(len(y))), 3]
    with torch.inference_mode():
        got = roc_auc_score(y, model(test)["ctr"].double().numpy())
        without_x3 = roc_auc_score(y, model({**test, "sparse": shuffled})["ctr"].double().numpy())
    assert got > oracle - 0.05, (got, oracle)
    assert without_x3 < 0.6


def test_unknown_model_and_bad_config():
    spec, _ = make_ctr_problem(n=10)
    with pytest.raises(UnknownComponentError, match="known:"):
        build_ranker("deepfn", spec, {})
    with pytest.raises(ConfigError, match="hiden"):
        build_ranker("deepfm", spec, {"hiden": [8]})
