"""Every registered ranking model (RANKERS.names(), cases in tests/zoo_cases.py) learns the
planted CTR signal; the shared contract (fixed seed, batch = one-by-one, save/load) is in
tests/contracts/test_rankers.py."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from funnelrec.core.errors import ConfigError, UnknownComponentError
from funnelrec.models.ranking.common import build_ranker
from funnelrec.train.trainer import Trainer, TrainerConfig
from zoo_cases import (  # tests/ is on sys.path
    build_case,
    case_ids,
    ctr_loss,
    make_ctr_problem,
    require_case,
    split_ctr_problem,
    zoo_cases,
)

CASES = zoo_cases()


@pytest.fixture(scope="module")
def problem():
    return split_ctr_problem(3000, 2400)


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=case_ids(CASES))
def test_learns_the_planted_signal(name, cfg, problem):
    """Beats the constant predictor on held-out rows: scikit-learn's AUC > 0.6 and log-loss
    below the base rate's, for the click task of every model."""
    spec, train, test = problem
    model = build_case(name, require_case(name, cfg), spec, train)
    Trainer(TrainerConfig(epochs=6, batch_size=256, lr=1e-2, seed=0, num_threads=1)).fit(model, ctr_loss, train)
    with torch.inference_mode():
        out = model(test)
    click = "ctr" if "ctr" in out else next(iter(out))
    assert out[click].shape == (len(test["label"]),)
    p = torch.sigmoid(out[click]).double().numpy()
    y = test["label"].numpy()
    assert roc_auc_score(y, p) > 0.6
    assert log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)) < log_loss(y, np.full_like(p, y.mean()))


def test_unknown_model_and_bad_config():
    spec, _ = make_ctr_problem(n=10)
    with pytest.raises(UnknownComponentError, match="known:"):
        build_ranker("deepfn", spec, {})
    with pytest.raises(ConfigError, match="hiden"):
        build_ranker("deepfm", spec, {"hiden": [8]})
