"""Target attention over a user's behaviour sequence: DIN's activation unit and DIEN's AUGRU.

Shapes: B = batch, L = sequence length, D = item-representation width, H = hidden width.
Masks are bool (B, L), True at real positions; padded positions never contribute.

    >>> import torch
    >>> att = DINAttention(dim=8, hidden=(16,))
    >>> q, k = torch.randn(4, 8), torch.randn(4, 5, 8)
    >>> mask = torch.tensor([[1, 1, 1, 0, 0]] * 4, dtype=torch.bool)
    >>> att(q, k, mask).shape, att.weights(q, k, mask).shape
    (torch.Size([4, 8]), torch.Size([4, 5]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from funnelrec.core.errors import ConfigError

ACTIVATIONS = ("relu", "prelu", "dice", "sigmoid", "tanh")


class Dice(nn.Module):
    """Data-adaptive activation of DIN (Zhou et al., 2018).

    f(x) = p ⊙ x + (1 − p) ⊙ α ⊙ x,   p = σ((x − E[x]) / √(Var[x] + ε))
    E, Var are per-channel batch statistics (running averages at eval time), taken over every
    leading axis. x: (..., H) → (..., H).

        >>> Dice(3)(torch.randn(5, 2, 3)).shape
        torch.Size([5, 2, 3])
    """

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.norm(x.reshape(-1, x.shape[-1]))).reshape(x.shape)
        return p * x + (1.0 - p) * self.alpha * x


def activation(name: str, dim: int) -> nn.Module:
    """Activation module by name (one of ACTIVATIONS); `dim` sizes PReLU/Dice parameters."""
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(dim)
    if name == "dice":
        return Dice(dim)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    raise ConfigError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


class LastAxis(nn.Module):
    """Applies a per-channel module (PReLU, Dice) to the last axis of a (..., H) tensor."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.inner, nn.PReLU) and x.dim() > 2:
            return self.inner(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        return self.inner(x)


def feedforward(
    in_dim: int,
    hidden: Sequence[int],
    act: str = "relu",
    dropout: float = 0.0,
    out_dim: int | None = None,
) -> nn.Sequential:
    """Linear → activation → dropout per hidden width, then an optional linear head.

    x: (..., in_dim) → (..., out_dim or hidden[-1] or in_dim).

        >>> feedforward(4, (8, 6), out_dim=1)(torch.randn(3, 4)).shape
        torch.Size([3, 1])
    """
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), LastAxis(activation(act, h))]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def feedforward_width(in_dim: int, hidden: Sequence[int], out_dim: int | None = None) -> int:
    """Output width of `feedforward(in_dim, hidden, out_dim=out_dim)`."""
    if out_dim is not None:
        return out_dim
    return hidden[-1] if len(hidden) else in_dim


class DINAttention(nn.Module):
    """DIN's local activation unit (Zhou et al., 2018): target attention WITHOUT softmax.

    w_l = MLP([q, k_l, q − k_l, q ⊙ k_l]) ∈ ℝ   (0 at padded positions)
    v   = Σ_l w_l · k_l

    The weights are not normalized, so Σ_l w_l carries the intensity of the user's interest
    in the target (the paper's reason for dropping softmax).

    query: (B, D), keys: (B, L, D), mask: (B, L) bool → pooled (B, D); `weights` → (B, L).

        >>> att = DINAttention(dim=4, hidden=(8,))
        >>> att(torch.randn(2, 4), torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)).shape
        torch.Size([2, 4])
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (80, 40), act: str = "prelu") -> None:
        super().__init__()
        self.dim = dim
        self.score = feedforward(4 * dim, hidden, act, out_dim=1)

    def weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalized attention weights (B, L), exactly 0 where mask is False."""
        q = query.unsqueeze(1).expand_as(keys)
        x = torch.cat([q, keys, q - keys, q * keys], dim=-1)
        w = self.score(x).squeeze(-1)
        return w * mask.to(w.dtype)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = self.weights(query, keys, mask)
        return torch.bmm(w.unsqueeze(1), keys).squeeze(1)


class BilinearAttention(nn.Module):
    """DIEN's attention of the target on the interest states, softmax over real positions.

    a_l = exp(h_l W e) / Σ_{j real} exp(h_j W e)   (0 at padded positions; all 0 if none real)

    states: (B, L, H), target: (B, D), mask: (B, L) → (B, L).

        >>> a = BilinearAttention(4, 6)(torch.randn(2, 3, 4), torch.randn(2, 6),
        ...                             torch.tensor([[True, True, False], [False, False, False]]))
        >>> a.shape, torch.allclose(a.sum(1), torch.tensor([1.0, 0.0])), bool(a[0, 2] == 0)
        (torch.Size([2, 3]), True, True)
    """

    def __init__(self, state_dim: int, target_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(target_dim, state_dim, bias=False)

    def forward(self, states: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = torch.bmm(states, self.proj(target).unsqueeze(-1)).squeeze(-1)
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1) * mask.to(logits.dtype)


class AUGRUCell(nn.Module):
    """GRU with attentional update gate (DIEN, Zhou et al., 2019).

    r  = σ(W_r x + U_r h + b_r)          u = σ(W_u x + U_u h + b_u)
    h̃  = tanh(W_h x + r ⊙ (U_h h) + b_h)
    u' = a · u                           h' = (1 − u') ⊙ h + u' ⊙ h̃

    x: (B, Din) (or its precomputed input projection (B, 3H) via `project`), h: (B, H),
    a: (B,) attention score → h' (B, H). With a = 0 the state passes through unchanged.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.x2h = nn.Linear(input_dim, 3 * hidden_dim)
        self.h2h = nn.Linear(hidden_dim, 3 * hidden_dim, bias=False)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Input projection W x + b for every step at once: (..., Din) → (..., 3H)."""
        return self.x2h(x)

    def step(self, gx: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        xr, xu, xh = gx.chunk(3, dim=-1)
        hr, hu, hh = self.h2h(h).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        u = torch.sigmoid(xu + hu) * a.unsqueeze(-1)
        cand = torch.tanh(xh + r * hh)
        return (1.0 - u) * h + u * cand

    def forward(self, x: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.step(self.project(x), h, a)


class AUGRU(nn.Module):
    """AUGRU over a sequence; returns the final interest state.

    x: (B, L, Din), att: (B, L), mask: (B, L) → h_L (B, H). Padded steps leave h unchanged
    (their attention is forced to 0), so padding may sit anywhere; h_0 = 0.

        >>> g = AUGRU(4, 6)
        >>> g(torch.randn(2, 3, 4), torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool)).shape
        torch.Size([2, 6])
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.cell = AUGRUCell(input_dim, hidden_dim)

    def forward(self, x: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gx = self.cell.project(x)
        a = att * mask.to(att.dtype)
        h = x.new_zeros(x.shape[0], self.cell.hidden_dim)
        for t in range(x.shape[1]):
            h = self.cell.step(gx[:, t], h, a[:, t])
        return h
