"""The `dense_as_fields` option of RecycleNet (its seed formula: tests/nn/test_recycle_seed.py), xDeepFM, All Interaction,
FFM, FiBiNET and Neural Interaction, checked against hand-written formulas."""

from dataclasses import replace

import pytest
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.models.ranking.common import build_ranker
from funnelrec.models.ranking.ffm import field_aware_pairs
from zoo_cases import make_ctr_problem  # tests/models is on sys.path (rootdir import mode)


def test_field_aware_pairs_matches_the_double_loop():
    torch.manual_seed(1)
    v = torch.randn(3, 5, 5, 2)
    want = torch.stack([sum(v[b, i, j] @ v[b, j, i] for i in range(5) for j in range(i + 1, 5)) for b in range(3)])
    torch.testing.assert_close(field_aware_pairs(v), want)
    # the hand-written backward against autograd's numerical gradient
    assert torch.autograd.gradcheck(field_aware_pairs, (torch.randn(2, 4, 4, 2, dtype=torch.float64, requires_grad=True),))


def test_ffm_without_dense_fields_is_sparse_ffm_plus_linear_dense():
    spec, batch = make_ctr_problem(n=16)
    torch.manual_seed(0)
    m = build_ranker("ffm", spec, {"embedding_dim": 3, "dense_as_fields": False}).eval()
    with torch.no_grad():
        m.linear.dense.weight.normal_()  # make the dense linear weights non-trivial
    F, D = spec.n_fields, 3
    table = m.embed.embedding.embedding.weight.view(-1, F, D)  # row → (target field, D)
    with torch.inference_mode():
        got = m(batch)["ctr"]
        rows = batch["sparse"]
        ffm = torch.stack([sum(table[rows[b, i], j] @ table[rows[b, j], i] for i in range(F) for j in range(i + 1, F))
                           for b in range(16)])
        torch.testing.assert_close(got, m.linear(rows, batch["dense"]) + ffm)
        # the dense features reach the logit only through the linear term: a_j · Δx_j
        moved = dict(batch, dense=batch["dense"] + torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(m(moved)["ctr"] - got, m.linear.dense.weight[0, 0].expand(16), rtol=1e-5, atol=1e-5)


def test_ffm_dense_fields_decomposition_equals_the_full_field_tensor():
    spec, batch = make_ctr_problem(n=16)
    torch.manual_seed(0)
    m = build_ranker("ffm", spec, {"embedding_dim": 3}).eval()
    with torch.no_grad():
        m.embed.embedding.embedding.weight.normal_()
        m.dense_weight.normal_()
    n, D = spec.n_fields + spec.n_dense, 3
    with torch.inference_mode():
        e = m.embed(batch).view(16, spec.n_fields, n, D)
        d = batch["dense"][:, :, None, None] * m.dense_weight  # (B, Dn, F', D): x_j · W_j
        full = torch.cat([e, d], dim=1)  # (B, F', F', D) as FieldAwareFM sees it
        want = torch.stack([sum(full[b, i, j] @ full[b, j, i] for i in range(n) for j in range(i + 1, n))
                            for b in range(16)])
        torch.testing.assert_close(m.pairs(batch), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_fields", [4, 18])  # F' = n_fields + 2 dense: the gather and the GEMM path
def test_neural_interaction_compression_equals_the_pair_loop(n_fields):
    spec, _ = make_ctr_problem(n=8)
    spec = replace(spec, n_fields=n_fields, field_names=())
    torch.manual_seed(0)
    m = build_ranker("neural_interaction", spec, {"embedding_dim": 3, "n_compressed": 5, "hidden": [8]})
    F = n_fields + 2
    v = torch.randn(4, F, 3)
    W = m.compress.weight  # (P, K), pairs in row-major i<j order
    pairs = [(i, j) for i in range(F) for j in range(i + 1, F)]
    want = torch.stack([sum(W[p, k] * v[:, i] * v[:, j] for p, (i, j) in enumerate(pairs)) for k in range(5)], 1)
    torch.testing.assert_close(m.compressed_pairs(v), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["fibinet", "neural_interaction", "recyclenet", "xdeepfm", "all_interaction"])
def test_raw_dense_shrinks_fields_and_feeds_the_mlp(name):
    spec, batch = make_ctr_problem(n=16)
    cfg = {"embedding_dim": 4, "hidden": [8]}
    torch.manual_seed(0)
    fields = build_ranker(name, spec, cfg)
    raw = build_ranker(name, spec, {**cfg, "dense_as_fields": False}).eval()
    assert fields.embed.n_fields == spec.n_fields + spec.n_dense
    assert raw.embed.n_fields == spec.n_fields and raw.embed.dense is None
    with torch.inference_mode():
        a = raw(batch)["ctr"]
        b = raw(dict(batch, dense=batch["dense"] * 0.5))["ctr"]
    assert not torch.allclose(a, b)  # dense still reaches the logit
    with pytest.raises(Exception, match="dense"):
        raw({"sparse": batch["sparse"]})


def test_recyclenet_needs_the_recycle_layer_width():
    spec, _ = make_ctr_problem(n=8)
    with pytest.raises(ConfigError, match="hidden"):
        build_ranker("recyclenet", spec, {"hidden": []})
