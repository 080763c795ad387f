"""DIN: Deep Interest Network (Zhou et al., KDD 2018).

The user's behaviour sequence is pooled by target attention (no softmax) against the
candidate, then an MLP scores [field embeddings, dense, candidate, pooled interest]:

    e_l = [E(seq_l), E(seq_cat_l)],  q = [E(target), E(target_cat)]         (B, L, De), (B, De)
    v   = Σ_l w(q, e_l) e_l          (DINAttention; De = 2D with categories, D without)
    logit = MLP([E(sparse) flattened, dense, q, v])                         (B,)

Also home of what the sequence, multi-task and multi-domain models share: the input helpers,
`CheckedConfig` (the checks every config repeats), `SharedTableRanker` (config + the one shared
embedding table, the input x = [E(sparse) flattened, dense]), `SequenceRanker` (+ the behaviour
sequence) and `SharedBottomRanker` (x → an expert network → one tower per task).

    >>> import torch
    >>> spec = FeatureSpec(n_embeddings=50, n_fields=3, n_dense=2, seq_len=5)
    >>> m = DIN(spec, DINConfig(embedding_dim=4, attention_hidden=(8,), mlp_hidden=(8,)))
    >>> m(toy_batch(spec, batch_size=6))["ctr"].shape
    torch.Size([6])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import RANKERS
from funnelrec.models.ranking.base import FeatureSpec, RankingModel
from funnelrec.nn import experts
from funnelrec.nn.attention import ACTIVATIONS, DINAttention, feedforward


def check_activation(name: str, where: str) -> None:
    if name not in ACTIVATIONS:
        raise ConfigError(f"{where}: unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


def require(batch: dict[str, torch.Tensor], keys: tuple[str, ...], model: str) -> None:
    """One-line DataError naming the first batch key a model needs but did not get."""
    for k in keys:
        if k not in batch:
            raise DataError(f"{model} needs batch key {k!r}; got {sorted(batch)}")


def shared_embedding(spec: FeatureSpec, dim: int) -> nn.Embedding:
    """The one shared table: row 0 is padding (kept at 0), others N(0, 0.05²)."""
    if spec.n_embeddings < 2:
        raise ConfigError(f"FeatureSpec.n_embeddings must be ≥ 2 (row 0 is padding), got {spec.n_embeddings}")
    table = nn.Embedding(spec.n_embeddings, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=0.05)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


def field_width(spec: FeatureSpec, dim: int) -> int:
    return spec.n_fields * dim + spec.n_dense


def field_inputs(table: nn.Embedding, batch: dict[str, torch.Tensor], spec: FeatureSpec) -> torch.Tensor:
    """[E(sparse) flattened, dense]: (B, F) int64 (+ (B, Dn)) → (B, F·D + Dn)."""
    x = table(batch["sparse"]).flatten(1)
    if spec.n_dense:
        x = torch.cat([x, batch["dense"]], dim=1)
    return x


def behaviour_inputs(
    table: nn.Embedding, batch: dict[str, torch.Tensor], use_category: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Behaviour keys (B, L, De), target query (B, De), mask (B, L); De = 2D with categories."""
    keys, query = table(batch["seq"]), table(batch["target"])
    if use_category:
        keys = torch.cat([keys, table(batch["seq_cat"])], dim=-1)
        query = torch.cat([query, table(batch["target_cat"])], dim=-1)
    return keys, query, batch["seq_mask"].bool()


def sequence_keys(use_category: bool) -> tuple[str, ...]:
    base = ("sparse", "seq", "seq_mask", "target")
    return base + ("seq_cat", "target_cat") if use_category else base


def toy_batch(spec: FeatureSpec, batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch in the layout of models/ranking/base.py (for examples and tests)."""
    g = torch.Generator().manual_seed(seed)
    B, L, n = batch_size, max(spec.seq_len, 1), spec.n_embeddings
    mask = torch.rand(B, L, generator=g) < 0.7
    seq = torch.randint(1, n, (B, L), generator=g) * mask
    out = {
        "sparse": torch.randint(1, n, (B, spec.n_fields), generator=g),
        "seq": seq,
        "seq_cat": torch.randint(1, n, (B, L), generator=g) * mask,
        "seq_mask": mask,
        "target": torch.randint(1, n, (B,), generator=g),
        "target_cat": torch.randint(1, n, (B,), generator=g),
        "domain": torch.randint(0, spec.n_domains, (B,), generator=g),
    }
    if spec.n_dense:
        out["dense"] = torch.randn(B, spec.n_dense, generator=g)
    return out


def check_sequence_spec(spec: FeatureSpec, model: str) -> None:
    if spec.seq_len < 1:
        raise ConfigError(f"{model} needs sequence features: FeatureSpec.seq_len must be ≥ 1")


class CheckedConfig:
    """Mixin for the rankers' frozen config dataclasses: the checks they all repeat, by field name.

    After construction every field named `*activation` must name a known activation, and each
    field in `at_least` (`embedding_dim` ≥ 1 always, plus the config's own entries) must be at
    least its bound; then the config's own `check()` runs. Adds no dataclass fields, so the
    fields, their order and `from_dict` stay as declared.
    """

    at_least: ClassVar[dict[str, float]] = {}

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name.endswith("activation"):
                check_activation(getattr(self, f.name), f"{name}.{f.name}")
        for key, low in {"embedding_dim": 1, **self.at_least}.items():
            value = getattr(self, key, low)
            if value < low:
                raise ConfigError(f"{name}.{key} must be ≥ {low}, got {value}")
        self.check()

    def check(self) -> None:
        """Model-specific checks; raise a ConfigError naming the field."""


class SharedTableRanker(RankingModel):
    """A ranker on the one shared embedding table (`shared_embedding`, attribute `embedding`).

    Sets `self.config` (`Config()` when None), then builds the table of `config.embedding_dim`:
    subclasses build their layers after it, so they draw their initial weights after the
    table's. The field input is x = [E(sparse) flattened, dense], (B, F·D + Dn): `inputs(batch)`,
    of width `input_width`.
    """

    Config: ClassVar[type]

    def __init__(self, spec: FeatureSpec, config: object | None = None) -> None:
        super().__init__(spec)
        self.config = config or self.Config()
        self.embedding = shared_embedding(spec, self.config.embedding_dim)

    @property
    def input_width(self) -> int:
        return field_width(self.spec, self.config.embedding_dim)

    def inputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[E(sparse) flattened, dense] (B, F·D + Dn); DataError when "sparse" is missing."""
        require(batch, ("sparse",), type(self).__name__)
        return field_inputs(self.embedding, batch, self.spec)


class SequenceRanker(SharedTableRanker):
    """A ranker on the user's behaviour sequence (DIN, DIEN, SIM); the spec must carry one.

    An item is [E(item), E(category)], De = 2D, or E(item) alone (De = D) when the config has
    `use_category` False: `item_dim` = De. `behaviours(batch)` → keys (B, L, De), target query
    (B, De), mask (B, L), with a DataError naming the first missing batch key.
    """

    def __init__(self, spec: FeatureSpec, config: object | None = None) -> None:
        check_sequence_spec(spec, type(self).__name__)
        super().__init__(spec, config)
        self.use_category = getattr(self.config, "use_category", True)
        self.item_dim = (2 if self.use_category else 1) * self.config.embedding_dim
        self._keys = sequence_keys(self.use_category)

    def behaviours(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        require(batch, self._keys, type(self).__name__)
        return behaviour_inputs(self.embedding, batch, self.use_category)


def task_logits(towers: experts.ParallelMLP, ys: list[torch.Tensor], tasks: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per-task towers run as one ParallelMLP: T × (B, H) → {task: (B,) logit}."""
    logits = towers(torch.stack(ys, dim=1)).squeeze(-1)  # (B, T)
    return dict(zip(tasks, logits.unbind(1), strict=True))


class SharedBottomRanker(SharedTableRanker):
    """Multi-task: x = inputs(batch) → an expert network → T task inputs → T towers.

        y^1, …, y^T = experts(x)          (B, H) each
        logit^t     = Tower_t(y^t)        (B,) per task t of spec.tasks

    A subclass builds the expert network in `build_experts(config, input_width, T)`: a module returning
    T tensors (B, H), with attribute `out_dim` = H. It is stored under the name `expert_net`
    (the prefix of its state_dict keys). The towers (config.tower_hidden, config.activation,
    one logit each) run as one ParallelMLP, built after the experts.
    """

    multi_task = True
    expert_net: ClassVar[str]

    def __init__(self, spec: FeatureSpec, config: object | None = None) -> None:
        super().__init__(spec, config)
        T, cfg = len(spec.tasks), self.config
        net = self.build_experts(cfg, self.input_width, T)
        self.add_module(self.expert_net, net)
        self.towers = experts.ParallelMLP(T, net.out_dim, cfg.tower_hidden, cfg.activation, out_dim=1)

    def build_experts(self, cfg: object, input_width: int, n_tasks: int) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ys = self.get_submodule(self.expert_net)(self.inputs(batch))
        return task_logits(self.towers, ys, self.spec.tasks)


@dataclass(frozen=True)
class DINConfig(CheckedConfig):
    embedding_dim: int = 16
    attention_hidden: tuple[int, ...] = (80, 40)
    attention_activation: str = "prelu"  # "dice" as in the paper (batch statistics)
    mlp_hidden: tuple[int, ...] = (200, 80)
    activation: str = "prelu"
    dropout: float = 0.0
    use_category: bool = True  # item representation = [item, category] embeddings


@RANKERS.register("din")
class DIN(SequenceRanker):
    """Target attention over `behaviours(batch)`, then the MLP over [x, q, v, *extra_features]
    (SIM subclasses it: the same attention over the behaviours its search keeps)."""

    Config = DINConfig
    n_extra_features: ClassVar[int] = 0

    def __init__(self, spec: FeatureSpec, config: DINConfig | None = None) -> None:
        super().__init__(spec, config)
        de, cfg = self.item_dim, self.config
        self.attention = DINAttention(de, cfg.attention_hidden, cfg.attention_activation)
        width = self.input_width + 2 * de + self.n_extra_features
        self.mlp = feedforward(width, cfg.mlp_hidden, cfg.activation, cfg.dropout, 1)

    def extra_features(self, mask: torch.Tensor, interest: torch.Tensor) -> list[torch.Tensor]:
        """Further MLP inputs, n_extra_features columns in all (none for DIN)."""
        return []

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys, query, mask = self.behaviours(batch)
        interest = self.attention(query, keys, mask)
        x = torch.cat([self.inputs(batch), query, interest, *self.extra_features(mask, interest)], dim=1)
        return {"ctr": self.mlp(x).squeeze(-1)}

    def attention_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L) unnormalized attention weights of the candidate on each behaviour (SIM: (B, K), on
        the searched ones)."""
        keys, query, mask = self.behaviours(batch)
        return self.attention.weights(query, keys, mask)
