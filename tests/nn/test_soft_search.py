"""SIM's soft search (nn/sequence.py `soft_search`, SIMConfig.search = "soft") against a brute-force
ranking of the inner products, and the SIM ranker's two search modes keeping different items."""

import pytest
import torch

from funnelrec.core.errors import ConfigError
from funnelrec.models.ranking.common import build_ranker
from funnelrec.nn.sequence import soft_search
from zoo_cases import make_ctr_problem


def test_soft_search_matches_brute_force_inner_product_top_k():
    g = torch.Generator().manual_seed(3)
    keys, query = torch.randn(6, 9, 4, generator=g), torch.randn(6, 4, generator=g)
    mask = torch.rand(6, 9, generator=g) < 0.6
    mask[0] = False  # a user with no history
    mask[1, :2] = True
    mask[1, 2:] = False  # fewer real items than K
    idx, found = soft_search(keys, mask, query, 4)
    assert idx.shape == found.shape == (6, 4)
    for b in range(6):
        real = [int(l) for l in torch.nonzero(mask[b]).flatten()]
        want = sorted(real, key=lambda l: -float(keys[b, l] @ query[b]))[:4]
        assert idx[b][found[b]].tolist() == want
    assert found[0].sum() == 0 and found[1].sum() == 2


def test_sim_soft_mode_attends_over_the_top_inner_product_items():
    spec, batch = make_ctr_problem(n=16, seq_len=8)
    cfg = {"embedding_dim": 4, "top_k": 2, "attention_hidden": [8], "mlp_hidden": [8]}
    torch.manual_seed(0)
    soft = build_ranker("sim", spec, {**cfg, "search": "soft"}).eval()
    hard = build_ranker("sim", spec, cfg).eval()
    hard.load_state_dict(soft.state_dict())  # same weights: only the search differs
    with torch.inference_mode():
        keys, query, found = soft.behaviours(batch)
        E = soft.embedding
        full = torch.cat([E(batch["seq"]), E(batch["seq_cat"])], -1)
        for b in range(16):
            real = torch.nonzero(batch["seq_mask"][b]).flatten().tolist()
            best = sorted(real, key=lambda l: -float(full[b, l] @ query[b]))[:2]
            torch.testing.assert_close(keys[b][found[b]], full[b, best])
        assert not torch.allclose(soft(batch)["ctr"], hard(batch)["ctr"])
    with pytest.raises(ConfigError, match="search"):
        build_ranker("sim", spec, {**cfg, "search": "fuzzy"})
