"""Contract tests shared by every registered ranking model (cases in zoo_cases.py)."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from zoo_cases import ZOO_CASES, make_ctr_problem  # tests/models is on sys.path (rootdir import mode)

from funnelrec.core.errors import ConfigError, UnknownComponentError
from funnelrec.eval.metrics import auc
from funnelrec.models.ranking.common import build_ranker
from funnelrec.train.trainer import Trainer, TrainerConfig

IDS = [f"{name}-{i}" for i, (name, _) in enumerate(ZOO_CASES)]


def _split(batch, n_train):
    return ({k: v[:n_train] for k, v in batch.items()}, {k: v[n_train:] for k, v in batch.items()})


def _loss(model, batch):
    out = model(batch)
    return sum(F.binary_cross_entropy_with_logits(v, batch.get(f"label_{k}", batch["label"])) for k, v in out.items())


def _train(name, cfg, batch, epochs=6, seed=0):
    spec, _ = make_ctr_problem()
    torch.manual_seed(seed)
    model = build_ranker(name, spec, cfg)
    if hasattr(model, "prepare"):
        model.prepare(batch)
    Trainer(TrainerConfig(epochs=epochs, batch_size=256, lr=1e-2, seed=seed, num_threads=1)).fit(model, _loss, batch)
    return model


@pytest.fixture(scope="module")
def problem():
    spec, batch = make_ctr_problem()
    return spec, *_split(batch, 2400)


@pytest.mark.parametrize(("name", "cfg"), ZOO_CASES, ids=IDS)
def test_learns_the_signal_and_contracts_hold(name, cfg, problem):
    spec, train, test = problem
    model = _train(name, cfg, train)
    with torch.inference_mode():
        out = model(test)
    first = next(iter(out))
    assert out[first].shape == (len(test["label"]),)
    p = torch.sigmoid(out[first]).double().numpy()
    y = test["label"].numpy()
    # beats a constant predictor: ranks better than chance and log-loss below the base rate's
    assert auc(y, p) > 0.6
    base = y.mean()
    base_ll = -(y * np.log(base) + (1 - y) * np.log(1 - base)).mean()
    ll = -(y * np.log(np.clip(p, 1e-7, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-7, 1))).mean()
    assert ll < base_ll

    # batch scoring equals one-by-one scoring
    with torch.inference_mode():
        ones = torch.cat([model({k: v[j : j + 1] for k, v in test.items()})[first] for j in range(20)])
    torch.testing.assert_close(ones, out[first][:20], rtol=1e-5, atol=1e-5)

    # save/load round trip (state_dict through bytes) gives identical outputs
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)
    fresh = build_ranker(name, spec, cfg)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    fresh.eval()
    with torch.inference_mode():
        torch.testing.assert_close(fresh(test)[first], out[first], rtol=0, atol=0)


@pytest.mark.parametrize(("name", "cfg"), ZOO_CASES, ids=IDS)
def test_fixed_seed_gives_identical_outputs(name, cfg, problem):
    _, train, test = problem
    small = {k: v[:600] for k, v in train.items()}
    outs = []
    for _ in range(2):
        m = _train(name, cfg, small, epochs=1, seed=7)
        with torch.inference_mode():
            outs.append(next(iter(m(test).values())))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_unknown_model_and_bad_config():
    spec, _ = make_ctr_problem(n=10)
    with pytest.raises(UnknownComponentError, match="known:"):
        build_ranker("deepfn", spec, {})
    with pytest.raises(ConfigError, match="hiden"):
        build_ranker("deepfm", spec, {"hiden": [8]})
