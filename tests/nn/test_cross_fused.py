"""nn.cross.cross_v2_stack (DCN-V2's full-rank stack as one autograd node) and DCNv2's fused
step path, against torch autograd on the plain formulas."""

from __future__ import annotations

import torch

from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.common import build_ranker
from funnelrec.nn.cross import cross_v2_stack


def test_cross_v2_stack_matches_the_formula_and_its_autograd_gradient():
    g = torch.Generator().manual_seed(0)
    d, n = 7, 3
    x0 = torch.randn(5, d, generator=g, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for _ in range(n) for t in (torch.randn(d, d, generator=g, dtype=torch.float64),
                                                             torch.randn(d, generator=g, dtype=torch.float64))]
    x = x0
    for i in range(n):  # x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l, written out
        x = x0 * (x @ params[2 * i].T + params[2 * i + 1]) + x
    out = cross_v2_stack(x0, params)
    assert torch.allclose(out, x)
    w = torch.randn(5, d, generator=g, dtype=torch.float64)
    ref = torch.autograd.grad((x * w).sum(), [x0, *params])
    got = torch.autograd.grad((out * w).sum(), [x0, *params])
    for r, q in zip(ref, got, strict=True):
        assert torch.allclose(r, q)
    assert torch.autograd.gradcheck(lambda a, *p: cross_v2_stack(a, list(p)), (x0, *params))


def test_dcnv2_fused_step_equals_the_eager_model():
    spec = FeatureSpec(n_embeddings=50, n_fields=5, n_dense=3, field_names=("u", "i", "g", "g", "g"), pool_multi=True)
    g = torch.Generator().manual_seed(1)
    batch = {"sparse": torch.randint(0, 50, (64, 5), generator=g), "dense": torch.rand(64, 3, generator=g)}
    batch["sparse"][:, 3:] *= torch.randint(0, 2, (64, 2), generator=g)  # some genre slots empty (padding row 0)
    y = torch.randint(0, 2, (64,), generator=g).float()
    for structure in ("parallel", "stacked"):
        cfg = {"embedding_dim": 4, "hidden": [16, 8], "dense_as_fields": False, "structure": structure}
        torch.manual_seed(0)
        eager = build_ranker("dcnv2", spec, {**cfg, "fused": False})
        torch.manual_seed(0)
        fused = build_ranker("dcnv2", spec, cfg)
        assert fused.deep.fused and fused.cross.fused and not eager.deep.fused
        losses = []
        for m in (eager, fused):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(batch)["ctr"], y)
            loss.backward()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-6
        for (name, p), q in zip(eager.named_parameters(), fused.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, atol=1e-6), name
        assert float(eager.embed.embedding.embedding.weight.grad.abs().sum()) > 0
