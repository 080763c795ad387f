"""Experts and gates for multi-task and multi-scenario ranking: MMoE, PLE (CGC), STAR, PEPNet.

Shapes: B = batch, Din = input width, E = experts, T = tasks, H = hidden width, d = domain id.
Several same-shaped MLPs (experts, task towers) run as one batched einsum (`ParallelMLP`),
not as a Python loop over modules.

    >>> import torch
    >>> mmoe = MMoE(input_dim=6, n_experts=3, n_tasks=2, expert_hidden=(8,))
    >>> [y.shape for y in mmoe(torch.randn(4, 6))]
    [torch.Size([4, 8]), torch.Size([4, 8])]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from funnelrec.nn.attention import LastAxis, activation


class ParallelLinear(nn.Module):
    """n independent linear maps applied at once.

    y[:, i] = x[:, i] W_i + b_i.  x: (B, n, Din) or (B, Din) (shared by all n) → (B, n, Dout).

        >>> ParallelLinear(3, 4, 5)(torch.randn(2, 4)).shape
        torch.Size([2, 3, 5])
    """

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.einsum("bi,nio->bno", x, self.weight) + self.bias
        return torch.einsum("bni,nio->bno", x, self.weight) + self.bias


class ParallelMLP(nn.Module):
    """n independent MLPs of the same shape (experts, task towers) as batched einsums.

    x: (B, n, Din) or (B, Din) → (B, n, hidden[-1]) (→ (B, n, out_dim) with a head).

        >>> ParallelMLP(2, 4, (8, 3))(torch.randn(5, 4)).shape
        torch.Size([5, 2, 3])
    """

    def __init__(
        self,
        n: int,
        in_dim: int,
        hidden: Sequence[int],
        act: str = "relu",
        dropout: float = 0.0,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(ParallelLinear(n, d, h))
            layers.append(LastAxis(activation(act, h)))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(ParallelLinear(n, d, out_dim))
            d = out_dim
        self.layers = nn.Sequential(*layers)
        self.n, self.out_dim = n, d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and len(self.layers) == 0:
            return x.unsqueeze(1).expand(-1, self.n, -1)
        return self.layers(x)


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    e_i = Expert_i(x) ∈ ℝ^H,   g^k = Dropout(softmax(W_k x)) ∈ ℝ^E,   y^k = Σ_i g^k_i e_i
    Dropout on the gate's softmax output (training only) keeps gates from collapsing onto one
    expert ("expert polarization").

    x: (B, Din) → list of T tensors (B, H); `gates(x)` → (B, T, E).
    """

    def __init__(
        self,
        input_dim: int,
        n_experts: int,
        n_tasks: int,
        expert_hidden: Sequence[int] = (64,),
        gate_dropout: float = 0.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.experts = ParallelMLP(n_experts, input_dim, expert_hidden, act)
        self.gate = nn.Linear(input_dim, n_tasks * n_experts)
        self.gate_dropout = nn.Dropout(gate_dropout)
        self.n_tasks, self.n_experts = n_tasks, n_experts
        self.out_dim = self.experts.out_dim

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x).view(-1, self.n_tasks, self.n_experts)
        return self.gate_dropout(torch.softmax(logits, dim=-1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e = self.experts(x)  # (B, E, H)
        y = torch.bmm(self.gates(x), e)  # (B, T, H)
        return list(y.unbind(1))


class CGC(nn.Module):
    """Customized gate control, one extraction layer of PLE (Tang et al., RecSys 2020).

    Task k mixes its own experts and the shared ones:
        y^k = Σ_{i ∈ E_k ∪ S} softmax(W_k x^k)_i · Expert_i(input of expert i)
    and (if `shared_output`) the shared branch mixes all experts for the next layer:
        y^s = Σ_{i ∈ all} softmax(W_s x^s)_i · Expert_i(…)
    Task experts read x^k, shared experts read x^s.

    inputs: list of T + 1 tensors (B, Din) — task inputs then the shared input →
    list of T (+1) tensors (B, H).
    """

    def __init__(
        self,
        input_dim: int,
        n_tasks: int,
        n_specific: int,
        n_shared: int,
        expert_hidden: Sequence[int] = (64,),
        shared_output: bool = False,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.n_tasks, self.n_specific, self.n_shared = n_tasks, n_specific, n_shared
        self.shared_output = shared_output
        n_total = n_tasks * n_specific + n_shared
        self.experts = ParallelMLP(n_total, input_dim, expert_hidden, act)
        self.task_gates = ParallelLinear(n_tasks, input_dim, n_specific + n_shared)
        self.shared_gate = nn.Linear(input_dim, n_total) if shared_output else None
        self.out_dim = self.experts.out_dim

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        T, S, K = self.n_tasks, self.n_shared, self.n_specific
        tasks_x = torch.stack(list(inputs[:T]), dim=1)  # (B, T, Din)
        shared_x = inputs[T]
        expert_in = torch.cat(
            [tasks_x.repeat_interleave(K, dim=1), shared_x.unsqueeze(1).expand(-1, S, -1)], dim=1
        )
        e = self.experts(expert_in)  # (B, T·K + S, H)
        B, _, H = e.shape
        specific = e[:, : T * K].reshape(B, T, K, H)
        shared = e[:, T * K :].unsqueeze(1).expand(-1, T, -1, -1)
        pool = torch.cat([specific, shared], dim=2)  # (B, T, K + S, H)
        g = torch.softmax(self.task_gates(tasks_x), dim=-1)  # (B, T, K + S)
        out = list((g.unsqueeze(-1) * pool).sum(2).unbind(1))
        if self.shared_gate is not None:
            gs = torch.softmax(self.shared_gate(shared_x), dim=-1)
            out.append(torch.bmm(gs.unsqueeze(1), e).squeeze(1))
        return out


class PLE(nn.Module):
    """Progressive layered extraction: stacked CGC layers; the last drops the shared output.

    x: (B, Din) → list of T tensors (B, H).

        >>> [y.shape for y in PLE(6, n_tasks=2, n_layers=2, expert_hidden=(8,))(torch.randn(3, 6))]
        [torch.Size([3, 8]), torch.Size([3, 8])]
    """

    def __init__(
        self,
        input_dim: int,
        n_tasks: int,
        n_layers: int = 2,
        n_specific: int = 1,
        n_shared: int = 1,
        expert_hidden: Sequence[int] = (64,),
        act: str = "relu",
    ) -> None:
        super().__init__()
        layers, d = [], input_dim
        for i in range(n_layers):
            layer = CGC(d, n_tasks, n_specific, n_shared, expert_hidden, i < n_layers - 1, act)
            layers.append(layer)
            d = layer.out_dim
        self.layers = nn.ModuleList(layers)
        self.n_tasks, self.out_dim = n_tasks, d

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = [x] * (self.n_tasks + 1)
        for layer in self.layers:
            h = layer(h)
        return h[: self.n_tasks]


def _group_by_domain(domain: torch.Tensor, n_domains: int) -> tuple[torch.Tensor, list[int]]:
    order = torch.argsort(domain, stable=True)
    counts = torch.bincount(domain, minlength=n_domains).tolist()
    return order, counts


class StarFC(nn.Module):
    """STAR's star-topology fully connected layer (Sheng et al., CIKM 2021).

    For a sample of domain d:  y = x (W_s ⊙ W_d) + b_s + b_d
    W_s (Din, Dout) is shared by all domains, W_d starts at 1 so every domain starts shared.

    x: (B, Din), domain: (B,) int64 in [0, n_domains) → (B, Dout).

        >>> StarFC(4, 3, n_domains=2)(torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])).shape
        torch.Size([5, 3])
    """

    def __init__(self, in_dim: int, out_dim: int, n_domains: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.shared_weight = nn.Parameter(torch.empty(in_dim, out_dim).uniform_(-bound, bound))
        self.shared_bias = nn.Parameter(torch.zeros(out_dim))
        self.domain_weight = nn.Parameter(torch.ones(n_domains, in_dim, out_dim))
        self.domain_bias = nn.Parameter(torch.zeros(n_domains, out_dim))
        self.n_domains = n_domains

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        order, counts = _group_by_domain(domain, self.n_domains)
        parts = []
        for d, xs in enumerate(x[order].split(counts)):
            if xs.shape[0]:
                w = self.shared_weight * self.domain_weight[d]
                parts.append(xs @ w + self.domain_bias[d])
        return torch.cat(parts)[torch.argsort(order)] + self.shared_bias


class PartitionedNorm(nn.Module):
    """STAR's partitioned normalization (Sheng et al., CIKM 2021, eq. 3), statistics per domain.

    z' = (γ ⊙ γ_p) ⊙ (z − E_p) / √(Var_p + ε) + (β + β_p)     for a sample of domain p

    E_p, Var_p are domain p's own per-channel statistics: in training, the mean and biased
    variance over the batch's samples of domain p; at inference, domain p's running averages
    (running_p ← (1 − momentum)·running_p + momentum·batch_p, with the unbiased variance, as
    BatchNorm). Domains differ in their feature distributions; one shared E, Var would
    normalize a small domain by the large domain's statistics — the paper's reason for the
    partition. A domain with fewer than 2 samples in a training batch has no variance there: it
    is normalized by its running statistics and they are left unchanged. γ, β are shared,
    γ_p (starts at 1), β_p (starts at 0) belong to domain p.

    z: (B, D), domain: (B,) int64 in [0, n_domains) → (B, D).

        >>> pn = PartitionedNorm(1, n_domains=2)
        >>> z, d = torch.tensor([[1.0], [3.0], [10.0], [30.0]]), torch.tensor([0, 0, 1, 1])
        >>> pn(z, d).squeeze(1).round(decimals=3).tolist()   # each domain standardized on its own
        [-1.0, 1.0, -1.0, 1.0]
    """

    def __init__(self, dim: int, n_domains: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum, self.n_domains = eps, momentum, n_domains
        self.register_buffer("running_mean", torch.zeros(n_domains, dim))
        self.register_buffer("running_var", torch.ones(n_domains, dim))
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.domain_gamma = nn.Parameter(torch.ones(n_domains, dim))
        self.domain_beta = nn.Parameter(torch.zeros(n_domains, dim))

    def domain_statistics(self, z: torch.Tensor, domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_p, Var_p) (n_domains, D) the forward pass normalizes by: the batch's per-domain
        mean and biased variance (training; running stats for domains with < 2 samples, whose
        running stats are then updated), or the running stats (eval)."""
        if not self.training:
            return self.running_mean, self.running_var
        n = torch.bincount(domain, minlength=self.n_domains).to(z.dtype)  # (P,)
        total = z.new_zeros(self.n_domains, z.shape[1]).index_add_(0, domain, z)
        mean = total / n.clamp_min(1.0).unsqueeze(1)
        dev = z - mean[domain]
        sq = z.new_zeros(self.n_domains, z.shape[1]).index_add_(0, domain, dev * dev)
        var = sq / n.clamp_min(1.0).unsqueeze(1)
        seen = (n >= 2).unsqueeze(1)  # (P, 1)
        with torch.no_grad():
            m = self.momentum
            unbiased = sq / (n - 1.0).clamp_min(1.0).unsqueeze(1)
            self.running_mean.copy_(torch.where(seen, (1 - m) * self.running_mean + m * mean, self.running_mean))
            self.running_var.copy_(torch.where(seen, (1 - m) * self.running_var + m * unbiased, self.running_var))
        return torch.where(seen, mean, self.running_mean), torch.where(seen, var, self.running_var)

    def forward(self, z: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        mean, var = self.domain_statistics(z, domain)
        zn = (z - mean[domain]) * torch.rsqrt(var[domain] + self.eps)
        return zn * (self.gamma * self.domain_gamma[domain]) + (self.beta + self.domain_beta[domain])


class GateNU(nn.Module):
    """PEPNet's gate neural unit (Chang et al., KDD 2023).

    δ = γ · σ(W_2 ReLU(W_1 x + b_1) + b_2),  γ = 2 so δ ∈ (0, 2) and starts near 1 (identity).

    x: (B, Din) → (B, Dout).

        >>> GateNU(4, 6)(torch.randn(2, 4)).shape
        torch.Size([2, 6])
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        hidden = hidden or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.sigmoid(self.net(x))


class EPNet(nn.Module):
    """Embedding personalized network: scenario-gated LHUC on the general embeddings.

    O_ep = GateNU(E_domain ⊕ sg(E)) ⊙ E      (sg = stop-gradient: the gate does not train E)

    embeddings: (B, Dg) flattened general embeddings, domain_emb: (B, Dd) → (B, Dg).

        >>> EPNet(6, 2)(torch.randn(3, 6), torch.randn(3, 2)).shape
        torch.Size([3, 6])
    """

    def __init__(self, general_dim: int, domain_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        self.gate = GateNU(general_dim + domain_dim, general_dim, hidden)

    def forward(self, embeddings: torch.Tensor, domain_emb: torch.Tensor) -> torch.Tensor:
        return self.gate(torch.cat([domain_emb, embeddings.detach()], dim=-1)) * embeddings


class PPNet(nn.Module):
    """Parameter personalized network: T task towers whose every hidden layer is scaled by a
    gate computed from the user/item prior and the (stop-gradient) EPNet output.

    p = E_prior ⊕ sg(O_ep);  per layer l, task t:  h_{l+1}^t = GateNU_l(p)^t ⊙ act(W_l^t h_l^t + b_l^t)
    logit^t = w^t · h_L^t + b^t

    x: (B, Din) tower input (O_ep ⊕ dense), prior: (B, Dp) → logits (B, T).

        >>> PPNet(5, 3, n_tasks=2, hidden=(8, 4))(torch.randn(6, 5), torch.randn(6, 3)).shape
        torch.Size([6, 2])
    """

    def __init__(
        self,
        input_dim: int,
        prior_dim: int,
        n_tasks: int,
        hidden: Sequence[int] = (64, 32),
        act: str = "relu",
        dropout: float = 0.0,
        gate_input_dim: int | None = None,
    ) -> None:
        super().__init__()
        gate_in = prior_dim + (input_dim if gate_input_dim is None else gate_input_dim)
        self.layers = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.acts = nn.ModuleList()
        d = input_dim
        for h in hidden:
            self.layers.append(ParallelLinear(n_tasks, d, h))
            self.gates.append(GateNU(gate_in, n_tasks * h))
            self.acts.append(LastAxis(activation(act, h)))
            d = h
        self.dropout = nn.Dropout(dropout)
        self.head = ParallelLinear(n_tasks, d, 1)
        self.n_tasks = n_tasks

    def forward(self, x: torch.Tensor, prior: torch.Tensor, gate_x: torch.Tensor | None = None) -> torch.Tensor:
        p = torch.cat([prior, (x if gate_x is None else gate_x).detach()], dim=-1)
        h = x
        for layer, gate, act in zip(self.layers, self.gates, self.acts, strict=True):
            z = act(layer(h))  # (B, T, H)
            h = self.dropout(z * gate(p).view(z.shape))
        return self.head(h).squeeze(-1)
