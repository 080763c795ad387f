"""The seed's All Interaction (N×16): every original field crossed with every compressed one,
z_{n,k} = Σ_m W_{m,k} ⟨v_n, v_m⟩, checked against the explicit double sum, and the logit
rebuilt by hand with dense features raw."""

import torch

from funnelrec.models.ranking.common import build_ranker
from zoo_cases import make_ctr_problem


def test_all_interaction_is_n_by_k_crossing_of_originals_and_compressed():
    spec, batch = make_ctr_problem(n=5)
    torch.manual_seed(0)
    m = build_ranker("all_interaction", spec, {"embedding_dim": 3, "n_compressed": 16, "hidden": [8]}).eval()
    N = spec.n_fields + spec.n_dense
    v = torch.randn(5, N, 3)
    W = m.compress.weight  # (N, K)
    want = torch.stack([torch.stack([sum(W[j, k] * (v[:, n] * v[:, j]).sum(-1) for j in range(N))
                                     for k in range(16)], 1) for n in range(N)], 1)
    got = m.crossed(v)
    assert got.shape == (5, N, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_all_interaction_raw_dense_logit_by_hand():
    spec, batch = make_ctr_problem(n=6)
    torch.manual_seed(0)
    m = build_ranker("all_interaction", spec, {"embedding_dim": 3, "n_compressed": 4, "hidden": [5],
                                               "dense_as_fields": False}).eval()
    assert m.embed.n_fields == spec.n_fields and m.deep.net[0].in_features == 4 * 3 + 4 * 4 + spec.n_dense
    with torch.inference_mode():
        v = m.embed(batch)
        u = torch.einsum("bnd,nk->bkd", v, m.compress.weight)
        z = torch.einsum("bnd,bkd->bnk", v, u)
        h = torch.cat([v.flatten(1), z.flatten(1), batch["dense"]], 1)
        want = m.linear(batch["sparse"], batch["dense"]) + m.deep(h).squeeze(-1)
        torch.testing.assert_close(m(batch)["ctr"], want)
