"""LeanAdam's step is torch's fused Adam/AdamW step, bit for bit, and its state is torch's."""

import pytest
import torch

from funnelrec.train.lean_adam import LeanAdam
from funnelrec.train.trainer import TrainerConfig, _optimizer


def _pair(seed=0):
    torch.manual_seed(seed)
    a = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Flatten(), torch.nn.Linear(12, 1))
    b = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Flatten(), torch.nn.Linear(12, 1))
    b.load_state_dict(a.state_dict())
    return a, b


def _steps(pairs, n=7, freeze_after=None):
    x = torch.randint(0, 20, (16, 3))
    for i in range(n):
        for net, opt in pairs:
            opt.zero_grad(set_to_none=True)
            loss = net(x).pow(2).mean()
            if freeze_after is not None and i >= freeze_after:  # the embedding gets no grad from here on
                loss = net[2](net[1](net[0](x).detach())).pow(2).mean()
            loss.backward()
            opt.step()


@pytest.mark.parametrize("decoupled", [False, True])
def test_step_is_torch_fused_adam_bit_for_bit(decoupled):
    a, b = _pair()
    lean = LeanAdam(a.parameters(), lr=0.03, weight_decay=0.05, decoupled=decoupled)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = cls(b.parameters(), lr=0.03, weight_decay=0.05, fused=True)
    _steps([(a, lean), (b, ref)], freeze_after=4)  # a parameter without grad is skipped, as torch does
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.parameters(), b.parameters()):
        sp, sq = lean.state[p], ref.state[q]
        assert sp.keys() == sq.keys()
        for k in sp:
            assert torch.equal(sp[k], sq[k]), k
    assert lean.state[next(a.parameters())]["step"].item() == 4.0  # the embedding stopped after 4 steps


def test_state_dict_round_trip_and_lr_change_reach_the_kernel():
    a, b = _pair(1)
    lean = LeanAdam(a.parameters(), lr=0.02)
    ref = torch.optim.Adam(b.parameters(), lr=0.02, fused=True)
    _steps([(a, lean), (b, ref)], n=3)
    # torch's optimizer resumes from the lean one's state, and the other way round
    ref2 = torch.optim.Adam(b.parameters(), lr=0.02, fused=True)
    ref2.load_state_dict(lean.state_dict())
    lean2 = LeanAdam(a.parameters(), lr=0.02)
    lean2.load_state_dict(ref.state_dict())
    for opt in (lean2, ref2):
        opt.param_groups[0]["lr"] = 0.005  # a schedule's change is read at every step
    _steps([(a, lean2), (b, ref2)], n=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_closure_and_amsgrad_take_torchs_step():
    a, b = _pair(2)
    lean = LeanAdam(a.parameters(), lr=0.01)
    lean.param_groups[0]["amsgrad"] = True
    ref = torch.optim.Adam(b.parameters(), lr=0.01, amsgrad=True, fused=True)
    _steps([(a, lean), (b, ref)], n=4)
    assert "max_exp_avg_sq" in lean.state[next(a.parameters())]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    x = torch.randint(0, 20, (8, 3))
    calls = []

    def closure():
        calls.append(1)
        lean.zero_grad()
        loss = a(x).pow(2).mean()
        loss.backward()
        return loss

    assert lean.step(closure) is not None and calls == [1]


def test_the_trainer_uses_it_for_dense_cpu_parameters_only():
    net = torch.nn.Linear(3, 1)
    assert isinstance(_optimizer(TrainerConfig(), net.parameters()), LeanAdam)
    opt = _optimizer(TrainerConfig(optimizer="adamw", weight_decay=0.1), net.parameters())
    assert isinstance(opt, LeanAdam) and opt.param_groups[0]["decoupled_weight_decay"]
    assert not isinstance(_optimizer(TrainerConfig(optimizer="adagrad"), net.parameters()), LeanAdam)
