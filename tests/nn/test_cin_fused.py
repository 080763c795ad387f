"""The fused CIN (one outer product + one GEMM per layer) against the paper's recursion written
as explicit sums, two layers with split_half, and xDeepFM's `dense_as_fields: false` wiring."""

import torch

from funnelrec.models.ranking.common import build_ranker
from funnelrec.nn.cin import CIN
from zoo_cases import make_ctr_problem


def _cin_by_hand(cin, x0):
    """X^k_h = Σ_i Σ_j W^k_{h,i,j} X^{k−1}_i ⊙ X^0_j (+ b), ReLU; half of each hidden layer feeds
    the next (split_half), the other half is sum-pooled over D into the output."""
    B, m, D = x0.shape
    x, out = x0, []
    for k, conv in enumerate(cin.convs):
        H = x.shape[1]
        W = conv.weight[:, :, 0].view(-1, H, m)
        h = torch.relu(torch.stack([sum(W[o, i, j] * x[:, i] * x0[:, j] for i in range(H) for j in range(m))
                                    + conv.bias[o] for o in range(W.shape[0])], 1))
        if k < len(cin.convs) - 1:
            x, keep = h[:, : h.shape[1] // 2], h[:, h.shape[1] // 2:]
        else:
            keep = h
        out.append(keep.sum(-1))
    return torch.cat(out, 1)


def test_two_layer_split_half_cin_equals_the_explicit_sums():
    torch.manual_seed(0)
    cin = CIN(3, (4, 2), split_half=True)
    x0 = torch.randn(5, 3, 4)
    assert cin.out_dim == 2 + 2
    with torch.no_grad():
        torch.testing.assert_close(cin(x0), _cin_by_hand(cin, x0), rtol=1e-5, atol=1e-5)


def test_xdeepfm_raw_dense_crosses_sparse_fields_only():
    spec, batch = make_ctr_problem(n=6)
    torch.manual_seed(0)
    m = build_ranker("xdeepfm", spec, {"embedding_dim": 3, "cin_layers": [4], "hidden": [5],
                                       "dense_as_fields": False}).eval()
    assert m.embed.n_fields == spec.n_fields and m.cin.convs[0].in_channels == spec.n_fields ** 2
    with torch.inference_mode():
        v = m.embed(batch)
        x = torch.cat([v.flatten(1), batch["dense"]], 1)
        want = (m.linear(batch["sparse"], batch["dense"]) + m.cin_out(_cin_by_hand(m.cin, v)).squeeze(-1)
                + m.deep(x).squeeze(-1))
        torch.testing.assert_close(m(batch)["ctr"], want, rtol=1e-5, atol=1e-5)
