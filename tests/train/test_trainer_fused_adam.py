"""The Trainer's fused Adam (one kernel for all parameters) follows torch's reference Adam."""

import torch

from funnelrec.train.trainer import TrainerConfig, _optimizer


def test_fused_adam_equals_reference_adam():
    torch.manual_seed(0)
    a = torch.nn.Linear(6, 3)
    b = torch.nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    fused = _optimizer(TrainerConfig(lr=0.05, weight_decay=0.01), a.parameters())
    ref = torch.optim.Adam(b.parameters(), lr=0.05, weight_decay=0.01, foreach=False)
    assert fused.defaults.get("fused") is True
    x = torch.randn(32, 6)
    for _ in range(5):
        for net, opt in ((a, fused), (b, ref)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
