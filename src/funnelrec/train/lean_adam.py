"""Adam/AdamW whose step is the fused CPU kernel and nothing else.

`torch.optim.Adam(fused=True)` spends most of a small model's optimizer step in Python: the
step decorators, `_init_group`'s per-parameter loop and the grouping of tensors by device and
dtype. For DeepFM on ml-100k that is ~210 µs per step around a ~100 µs kernel (docs/
BENCHMARKS.md, Session 12). `LeanAdam` keeps torch's Adam as it is — the same state
(`step`, `exp_avg`, `exp_avg_sq`), `state_dict`, `param_groups` and hyper-parameters — and
replaces `step()`, when the case is the plain one, with one `_foreach_add_` on the steps and one
`torch._fused_adam_` / `_fused_adamw_` call over cached lists: the same kernel and arguments
torch's fused path ends in, so the update is bit for bit torch's (tests/train/test_lean_adam.py).
Anything else (a closure, amsgrad, several groups, a tensor lr, sparse grads) takes
torch's own step.
"""

from __future__ import annotations

import torch


class LeanAdam(torch.optim.Adam):
    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, decoupled: bool = False) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True, decoupled_weight_decay=decoupled)
        self._cache: tuple | None = None  # (params with a grad, exp_avgs, exp_avg_sqs, steps)

    def _lean(self) -> tuple | None:
        if len(self.param_groups) != 1:
            return None
        g = self.param_groups[0]
        if g["amsgrad"] or g["maximize"] or g["capturable"] or g["differentiable"] or torch.is_tensor(g["lr"]):
            return None
        params = [p for p in g["params"] if p.grad is not None]
        if not params or any(p.grad.is_sparse or p.device.type != "cpu" for p in params):
            return None
        c = self._cache
        if c is not None and len(c[0]) == len(params) and all(a is b for a, b in zip(c[0], params)):
            return c
        for p in params:
            st = self.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif "max_exp_avg_sq" in st or st["step"].device.type != "cpu":
                return None
        self._cache = c = (params, [self.state[p]["exp_avg"] for p in params],
                           [self.state[p]["exp_avg_sq"] for p in params], [self.state[p]["step"] for p in params])
        return c

    @torch.no_grad()
    def step(self, closure=None):
        c = None if closure is not None else self._lean()
        if c is None:
            return super().step(closure)
        g = self.param_groups[0]
        params, m, v, steps = c
        beta1, beta2 = g["betas"]
        torch._foreach_add_(steps, 1)
        fn = torch._fused_adamw_ if g["decoupled_weight_decay"] else torch._fused_adam_
        fn(params, [p.grad for p in params], m, v, [], steps, amsgrad=False, lr=g["lr"], beta1=beta1,
           beta2=beta2, weight_decay=g["weight_decay"], eps=g["eps"], maximize=False, grad_scale=None, found_inf=None)
        return None

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._cache = None  # the state tensors were replaced
