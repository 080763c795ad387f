"""RecycleNet's layer as the seed defines it, and our recycling LHUC tower.

`RecycleLayer` (the seed's RecycleNet): the first layer's weights are used twice — once to
read the input and gate it, once to map the gated input:

    h = ReLU(W1 x + b1)                         (B, H)
    g = 2·σ(W2 h + b2)                          (B, Din)   gate on the input, neutral at 1
    y = ReLU(W1 (x ⊙ g) + b1)                   (B, H)     W1, b1 reused

so the layer's own first reading of x decides which input coordinates it reads again, at the
cost of one extra (H → Din) matrix and no extra first-layer weights.

    >>> import torch
    >>> RecycleLayer(3, 4)(torch.randn(2, 3)).shape
    torch.Size([2, 4])

`RecyclingLHUCMLP` (RecycleNet-LHUC, registered as "recyclenet_lhuc"; our own earlier variant):

An LHUC-gated MLP run T times with shared weights, each pass seeing the previous pass's last
hidden layer through its gates ("recycling" as in AlphaFold 2, Jumper et al. 2021):

    h_{-1} = 0 ∈ R^{H_L};   for t = 0 … T−1:
        c_t      = [p ; stopgrad(h_{t−1})]                             (B, Dp + H_L)
        x^{(t)}  = x ⊙ g^in(c_t)          (input gate; optional)      (B, Din)
        a_0 = x^{(t)};  a_l = ReLU(W_l a_{l−1} + b_l) ⊙ g^l(c_t)       (B, H_l), l = 1 … L
        h_t = a_L
    out = h_{T−1}                                                      (B, H_L)

Every gate is LHUC's form g(c) = 2·σ(W2 ReLU(W1 c + b1) + b2) (`LHUCGate`), so a neutral gate
is 1 and pass 0 — where the recycled half of c is zero — is exactly an LHUC gate of p alone.
The weights W_l and the gates are shared across passes; only the last pass carries gradients
(h_{t−1} is detached), so passes 0 … T−2 run without autograd.

`n_passes` overrides T for one call (the model samples it in 1 … T during training, as AlphaFold
samples its recycling count).

    >>> import torch
    >>> net = RecyclingLHUCMLP(6, 3, (8, 4), n_recycles=2)
    >>> net(torch.randn(2, 6), torch.randn(2, 3)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from funnelrec.core.errors import ConfigError
from funnelrec.nn.lhuc import LHUCGate


class RecycleLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.first = nn.Linear(in_dim, out_dim)  # W1, b1 (used twice)
        self.gate = nn.Linear(out_dim, in_dim)  # W2, b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Din) → (B, H)."""
        g = 2.0 * torch.sigmoid(self.gate(torch.relu(self.first(x))))
        return torch.relu(self.first(x * g))


class RecyclingLHUCMLP(nn.Module):
    def __init__(self, in_dim: int, gate_dim: int, hidden: tuple[int, ...] = (256, 256), n_recycles: int = 2,
                 dropout: float = 0.0, gate_hidden: int = 64, gate_input: bool = True) -> None:
        super().__init__()
        if n_recycles < 1 or not hidden:
            raise ConfigError(f"recycling MLP needs n_recycles ≥ 1 and ≥ 1 hidden layer, got {n_recycles}, {hidden}")
        dims = (in_dim, *hidden)
        c_dim = gate_dim + hidden[-1]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.gates = nn.ModuleList([LHUCGate(c_dim, b, gate_hidden) for b in hidden])
        self.input_gate = LHUCGate(c_dim, in_dim, gate_hidden) if gate_input else None
        self.dropout = nn.Dropout(dropout)
        self.n_recycles = n_recycles
        self.out_dim = dims[-1]

    def one_pass(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, Din), c = [p ; h_prev] (B, Dp + H_L) → (B, H_L)."""
        if self.input_gate is not None:
            x = x * self.input_gate(c)
        for lin, gate in zip(self.layers, self.gates):
            x = self.dropout(torch.relu(lin(x)) * gate(c))
        return x

    def forward(self, x: torch.Tensor, p: torch.Tensor, n_passes: int | None = None) -> torch.Tensor:
        """x (B, Din), p (B, Dp) → h_{T−1} (B, H_L), T = n_passes or n_recycles."""
        T = self.n_recycles if n_passes is None else n_passes
        if T < 1:
            raise ConfigError(f"n_passes must be ≥ 1, got {T}")
        h = x.new_zeros(x.shape[0], self.out_dim)
        with torch.no_grad():  # stop-gradient: only the last pass is differentiated
            for _ in range(T - 1):
                h = self.one_pass(x, torch.cat([p, h], dim=1))
        return self.one_pass(x, torch.cat([p, h], dim=1))
