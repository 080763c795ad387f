"""The ranking models' test cases, keyed by registered name: every name in RANKERS.names()
must have one (tests/contracts/test_rankers.py and tests/models/test_ranking_zoo.py run over
names(), so a ranker registered without a case here fails instead of skipping its contract).

CONFIGS[name]: small configs, one contract run each. SPEC_CHANGES[name]: FeatureSpec fields a
model needs beyond the default (ESMM's two nested tasks). `make_ctr_problem` builds a
synthetic CTR task with a known signal and every batch key of models/ranking/base.py (the
"seq*" fields of DIN/DIEN/SIM, "domain" of STAR/PEPNet), and models with a `prepare` stage
(gbdt_lr's trees) are prepared on the training rows by `build_case`.

This file sits in tests/ (on sys.path through tests/conftest.py) so that tests in any folder
can import it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec
from funnelrec.models.ranking.common import build_ranker, load_all

SMALL = {"embedding_dim": 8, "hidden": [32, 16]}

CONFIGS: dict[str, list[dict]] = {
    "lr": [{}],
    "fm": [{"embedding_dim": 8}],
    "ffm": [{"embedding_dim": 4}, {"embedding_dim": 4, "dense_as_fields": False}],
    "gbdt_lr": [{"n_trees": 10, "num_leaves": 8, "min_data_in_leaf": 5}],
    "widedeep": [SMALL],
    "deepfm": [SMALL, {**SMALL, "dense_as_fields": False}],
    "dcn": [{**SMALL, "cross_layers": 2}],
    "dcnv2": [{**SMALL, "cross_layers": 2},
              {**SMALL, "cross_layers": 2, "rank": 4, "n_experts": 2, "structure": "stacked"}],
    "gdcn": [{**SMALL, "cross_layers": 2}],
    "xdeepfm": [{**SMALL, "cin_layers": [8, 8]}, {**SMALL, "cin_layers": [8, 8], "dense_as_fields": False}],
    "fibinet": [{**SMALL, "bilinear": "each"}, {**SMALL, "dense_as_fields": False}],
    "lhuc": [{**SMALL, "gate_hidden": 8}],
    "recyclenet": [SMALL, {**SMALL, "dense_as_fields": False}],
    "neural_interaction": [{**SMALL, "n_compressed": 4, "dense_as_fields": False}, {**SMALL, "n_compressed": 4}],
    "all_interaction": [{**SMALL, "n_compressed": 4}, {**SMALL, "n_compressed": 4, "dense_as_fields": False}],
    "mmcn": [{**SMALL, "head_dim": 16, "cross_layers": 1}],
    "din": [{"embedding_dim": 8, "attention_hidden": [16], "mlp_hidden": [32, 16]}],
    "dien": [{"embedding_dim": 8, "mlp_hidden": [32, 16], "aux_loss_weight": 0.0}],  # aux loss: own tests
    "sim": [{"embedding_dim": 8, "top_k": 3, "attention_hidden": [16], "mlp_hidden": [32, 16]},
            {"embedding_dim": 8, "top_k": 3, "search": "soft", "attention_hidden": [16], "mlp_hidden": [32, 16]}],
    "mimn": [{"embedding_dim": 8, "memory_slots": 3, "induction_top_k": 1, "mlp_hidden": [32, 16]}],
    "mmoe": [{"embedding_dim": 8, "n_experts": 3, "expert_hidden": [32], "tower_hidden": [16]}],
    "ple": [{"embedding_dim": 8, "n_layers": 2, "expert_hidden": [16], "tower_hidden": [8]}],
    "esmm": [{"embedding_dim": 8, "tower_hidden": [16]}],
    "star": [{"embedding_dim": 8, "hidden": [32, 16], "aux_hidden": [8]}],
    "pepnet": [{"embedding_dim": 8, "tower_hidden": [32, 16]}],
}
# ESMM: (click task, click-and-convert task); label_cvr is 1 only where label_ctr is
SPEC_CHANGES: dict[str, dict] = {"esmm": {"tasks": ("ctr", "cvr")}}


def zoo_cases() -> list[tuple[str, dict | None]]:
    """(name, config) over RANKERS.names(); config None for a name without a case here (the
    test then fails through `require_case`)."""
    load_all()
    return [(name, cfg) for name in RANKERS.names() for cfg in CONFIGS.get(name, [None])]


def case_ids(cases: list[tuple[str, dict | None]]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name, _ in cases:
        out.append(f"{name}-{seen.get(name, 0)}")
        seen[name] = seen.get(name, 0) + 1
    return out


def require_case(name: str, cfg: dict | None) -> dict:
    if cfg is None:
        pytest.fail(f"ranker {name!r} is registered but has no case in tests/zoo_cases.py CONFIGS: "
                    f"add a small config (and SPEC_CHANGES if it needs special inputs)")
    return cfg


def make_ctr_problem(n: int = 3000, seed: int = 0, n_fields: int = 4, card: int = 12, seq_len: int = 5
                     ) -> tuple[FeatureSpec, dict[str, torch.Tensor]]:
    """A CTR task with a known signal: logit = a[x0] + b[x1] + c[x2, x3] (one main-effect table
    per field plus a pairwise interaction), each field with `card` values in its own row range."""
    spec, batch, _ = _planted_ctr_problem(n, seed, n_fields, card, seq_len)
    return spec, batch


def ctr_oracle_logit(n: int = 3000, seed: int = 0) -> torch.Tensor:
    """(n,) the true logit of `make_ctr_problem(n, seed)`'s rows (the labels are Bernoulli(σ(it)))."""
    return _planted_ctr_problem(n, seed)[2]


def _planted_ctr_problem(n: int = 3000, seed: int = 0, n_fields: int = 4, card: int = 12, seq_len: int = 5):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, card, (n, n_fields), generator=g)
    rows = codes + 1 + torch.arange(n_fields) * card  # disjoint row ranges per field
    a, b = torch.randn(card, generator=g), torch.randn(card, generator=g)
    c = 1.5 * torch.randn(card, card, generator=g)
    logit = a[codes[:, 0]] + b[codes[:, 1]] + c[codes[:, 2], codes[:, 3]] - 0.5
    y = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    n_rows = n_fields * card + 1
    dense = torch.rand(n, 2, generator=g)
    seq = torch.randint(1, n_rows, (n, seq_len), generator=g)
    mask = torch.rand(n, seq_len, generator=g) < 0.7
    batch = {
        "sparse": rows, "dense": dense, "label": y, "label_ctr": y, "label_cvr": y * (dense[:, 0] > 0.5).float(),
        "seq": torch.where(mask, seq, 0), "seq_cat": torch.where(mask, seq % 7 + 1, 0), "seq_mask": mask,
        "target": rows[:, 0], "target_cat": rows[:, 1] % 7 + 1, "domain": codes[:, 0] % 2,
    }
    spec = FeatureSpec(n_embeddings=n_rows, n_fields=n_fields, n_dense=2, seq_len=seq_len, n_domains=2,
                       field_names=("user_id", "item_id", "f2", "f3"))
    return spec, batch, logit


def case_spec(name: str, spec: FeatureSpec) -> FeatureSpec:
    return dataclasses.replace(spec, **SPEC_CHANGES.get(name, {}))


def build_case(name: str, cfg: dict, spec: FeatureSpec, train: dict[str, torch.Tensor], seed: int = 0):
    """The model of one case, initialized under `seed` and prepared on `train` if it has a
    prepare stage (gbdt_lr fits its trees there)."""
    torch.manual_seed(seed)
    model = build_ranker(name, case_spec(name, spec), cfg)
    if hasattr(model, "prepare"):
        model.prepare(train)
    return model


def ctr_loss(model, batch):
    """Σ over the model's task heads of BCE against label_<task> (or the single "label")."""
    import torch.nn.functional as F

    out = model(batch)
    return sum(F.binary_cross_entropy_with_logits(v, batch.get(f"label_{k}", batch["label"])) for k, v in out.items())


def split_ctr_problem(n: int, n_train: int):
    """(spec, train, test) of `make_ctr_problem(n)`: its first n_train rows and the rest."""
    spec, batch = make_ctr_problem(n=n)
    return spec, {k: v[:n_train] for k, v in batch.items()}, {k: v[n_train:] for k, v in batch.items()}
