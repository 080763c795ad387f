"""The contract every registered ranking model passes, over RANKERS.names() (cases in
tests/zoo_cases.py; a name without a case fails): the fixed seed gives identical outputs,
scoring rows in a batch equals scoring them one by one, and the weights round-trip through
`state_dict` into a differently initialized model. Every task head is compared."""

import io

import pytest
import torch

from funnelrec.core.registry import RANKERS
from funnelrec.train.trainer import Trainer, TrainerConfig
from zoo_cases import (
    CONFIGS,
    build_case,
    case_ids,
    ctr_loss,
    require_case,
    split_ctr_problem,
    zoo_cases,
)

CASES = zoo_cases()
IDS = case_ids(CASES)


@pytest.fixture(scope="module")
def problem():
    return split_ctr_problem(800, 600)


def _trained(name, cfg, spec, train, seed=7):
    model = build_case(name, cfg, spec, train, seed=seed)
    Trainer(TrainerConfig(epochs=1, batch_size=128, lr=1e-2, seed=seed, num_threads=1)).fit(model, ctr_loss, train)
    return model.eval()


def _outputs(model, batch):
    with torch.inference_mode():
        return {k: v.clone() for k, v in model(batch).items()}


def test_every_registered_ranker_has_a_case():
    names = set(RANKERS.names())
    assert len(names) >= 24
    assert not names - set(CONFIGS), f"rankers without a case in tests/zoo_cases.py: {sorted(names - set(CONFIGS))}"
    assert not set(CONFIGS) - names, f"cases for unregistered rankers: {sorted(set(CONFIGS) - names)}"


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_fixed_seed_gives_identical_outputs(name, cfg, problem):
    spec, train, test = problem
    cfg = require_case(name, cfg)
    a = _outputs(_trained(name, cfg, spec, train), test)
    b = _outputs(_trained(name, cfg, spec, train), test)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=f"{name}: task {k}")
    # and the seed matters: another seed trains another model (else the check above is vacuous)
    c = _outputs(_trained(name, cfg, spec, train, seed=8), test)
    assert any(not torch.equal(c[k], a[k]) for k in a), f"{name}: the seed changes nothing"


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_batch_scoring_equals_one_by_one(name, cfg, problem):
    spec, train, test = problem
    model = _trained(name, require_case(name, cfg), spec, train)
    rows = 24
    batch = {k: v[:rows] for k, v in test.items()}
    full = _outputs(model, batch)
    ones = [_outputs(model, {k: v[j : j + 1] for k, v in batch.items()}) for j in range(rows)]
    for k, v in full.items():
        assert v.shape == (rows,) and torch.isfinite(v).all()
        torch.testing.assert_close(torch.cat([o[k] for o in ones]), v, rtol=1e-6, atol=1e-6, msg=f"{name}: task {k}")
    # rows do not see each other: a batch in reverse order gives the same scores reversed
    rev = _outputs(model, {k: v.flip(0) for k, v in batch.items()})
    for k, v in full.items():
        torch.testing.assert_close(rev[k].flip(0), v, rtol=1e-6, atol=1e-6, msg=f"{name}: task {k}")


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_state_dict_round_trip_gives_identical_outputs(name, cfg, problem):
    spec, train, test = problem
    cfg = require_case(name, cfg)
    model = _trained(name, cfg, spec, train)
    want = _outputs(model, test)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = build_case(name, cfg, spec, {k: v[:300] for k, v in train.items()}, seed=123).eval()
    assert any(not torch.equal(v, want[k]) for k, v in _outputs(fresh, test).items()), \
        f"{name}: a fresh model already scores like the trained one"
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    got = _outputs(fresh, test)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"{name}: task {k}")


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_artifact_round_trip_gives_identical_outputs(name, cfg, problem, tmp_path):
    """Through core/persist.py (the artifact directory's per-component format, no pickle):
    the model is rebuilt through the registry (build_ranker's constructor record) and its
    weights and extra state (gbdt_lr's trees) restored."""
    from funnelrec.core.persist import load_state, save_state

    spec, train, test = problem
    model = _trained(name, require_case(name, cfg), spec, train)
    want = _outputs(model, test)
    save_state(model, tmp_path / "ranker")
    back = load_state(tmp_path / "ranker")
    assert type(back) is type(model) and back is not model
    got = _outputs(back.eval(), test)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"{name}: task {k}")
