"""The embedding side of DeepFM/FM and DCNv2 in one CPU kernel pair (numba): lookup, mean-pooling
of multi-valued fields, the raw dense columns appended, and for DeepFM the FM second-order term
and the first-order (linear) term, with a backward that scatters straight into the tables.

    v_g   = Σ_{f: group_f = g, row_f > 0} E[row_f] / max(1, #{f in g: row_f > 0})   (B, G, D)
    x     = [v_1 … v_G, dense]                                                      (B, G·D + Dn)
    fm    = Σ_{g<h} ⟨v_g, v_h⟩ = ½ (‖Σ_g v_g‖² − Σ_g ‖v_g‖²)                      (B,)
    lin   = Σ_{f: row_f > 0} w[row_f] + Σ_j a_j dense_j                             (B,)

    ∂fm/∂v_g = Σ_h v_h − v_g;  ∂L/∂E[r] += scale_bf · (∂L/∂v_g + ∂L/∂fm · ∂fm/∂v_g)  for row_bf = r;
    ∂L/∂a = Σ_b ∂L/∂lin_b · dense_b.

`fused_fm_block(E, w, rows, group, n_groups, dense, a) -> (x, fm, lin)` is what
nn/embedding.gather_pool + torch.cat + nn/interaction.FactorizationMachine + LinearTerm compute,
in two passes instead of ~30 eager torch ops (each ~40 µs at B = 2048 on this machine);
`fused_pool(E, rows, group, n_groups, dense) -> x` is the lookup + pooling + concat alone
(DCNv2's x0). The gradient of x's dense columns is dropped unless `dense` requires one, so a
consumer may leave those columns' gradient unset (nn.fused_mlp's `grad_cols`).

The embedding dimension D is a compile-time constant: one kernel pair per D (`_kernels`), built
when a model is constructed and cached on disk by numba (D is in the cache key), never inside a
fit. With D known the inner loops unroll into vector code: the backward at D = 10 takes half the
time of a kernel with D read from the array. Row 0 (padding) is skipped and gets no gradient.
float32, CPU, contiguous inputs.

    >>> import torch
    >>> E = torch.tensor([[0., 0.], [1., 0.], [0., 2.], [1., 1.]])
    >>> w = torch.tensor([[0.], [1.], [2.], [3.]])
    >>> v, fm, lin = fused_fm_block(E, w, torch.tensor([[1, 2, 3]]), torch.tensor([0, 1, 1]), 2)
    >>> v.tolist(), fm.tolist(), lin.tolist()   # v_1 = mean(E2, E3) = (.5, 1.5); ⟨v_0, v_1⟩ = .5
    ([[1.0, 0.0, 0.5, 1.5]], [0.5], [6.0])
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np
import torch

#        emb          w         rows          group     dense        a         x            fm        lin       scale        fm_on
_FWD_SIG = "void(f4[:, ::1], f4[::1], i8[:, ::1], i8[::1], f4[:, ::1], f4[::1], f4[:, ::1], f4[::1], f4[::1], f4[:, ::1], b1)"
#        rows          group     scale        x            gx           gfm       glin      dense        gemb         gw        ga        fm_on
_BWD_SIG = ("void(i8[:, ::1], i8[::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[::1], f4[::1], f4[:, ::1], "
            "f4[:, ::1], f4[::1], f4[::1], b1)")
_FAST = {"reassoc", "contract"}  # sums may reorder: the FM and pooling sums vectorize


_BUILD = threading.Lock()


def _kernels(d: int):
    """The (forward, backward) kernel pair for embedding dimension `d`, compiled (or loaded from
    numba's disk cache) on first use; one build per D even when models are built concurrently."""
    with _BUILD:
        return _build(d)


@functools.cache
def _build(d: int):
    D = d  # a closure constant: numba folds it into the loops

    @numba.njit(_FWD_SIG, cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
    def forward(emb, w, rows, group, dense, a, x, fm, lin, scale, fm_on):  # pragma: no cover - compiled
        n, n_fields = rows.shape
        n_dense = dense.shape[1]
        n_groups = (x.shape[1] - n_dense) // D
        gd = n_groups * D
        cnt = np.zeros(n_groups, np.float32)
        acc = np.zeros(gd, np.float32)
        s = np.zeros(D, np.float32)
        for b in range(n):
            for g in range(n_groups):
                cnt[g] = 0.0
            for f in range(n_fields):
                if rows[b, f] > 0:
                    cnt[group[f]] += 1.0
            for j in range(gd):
                acc[j] = 0.0
            lsum = np.float32(0.0)
            for f in range(n_fields):
                r = rows[b, f]
                if r > 0:
                    g = group[f]
                    c = np.float32(1.0) / cnt[g]
                    scale[b, f] = c
                    if fm_on:
                        lsum += w[r]
                    o = g * D
                    for k in range(D):
                        acc[o + k] += c * emb[r, k]
                else:
                    scale[b, f] = 0.0
            for j in range(gd):
                x[b, j] = acc[j]
            for j in range(n_dense):
                xj = dense[b, j]
                x[b, gd + j] = xj
                if fm_on:
                    lsum += a[j] * xj
            if fm_on:  # ½ (‖Σ_g v_g‖² − Σ_g ‖v_g‖²), each sum over contiguous memory (it vectorizes)
                lin[b] = lsum
                sq = np.float32(0.0)
                for j in range(gd):
                    sq += acc[j] * acc[j]
                for k in range(D):
                    s[k] = 0.0
                for g in range(n_groups):
                    for k in range(D):
                        s[k] += acc[g * D + k]
                tot = np.float32(0.0)
                for k in range(D):
                    tot += s[k] * s[k]
                fm[b] = 0.5 * (tot - sq)

    @numba.njit(_BWD_SIG, cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
    def backward(rows, group, scale, x, gx, gfm, glin, dense, gemb, gw, ga, fm_on):  # pragma: no cover - compiled
        n, n_fields = rows.shape
        n_dense = dense.shape[1]
        n_groups = (x.shape[1] - n_dense) // D
        gd = n_groups * D
        s = np.zeros(D, np.float32)
        t = np.zeros(gd, np.float32)  # ∂L/∂v_g of this row, then scattered to its fields' rows
        for b in range(n):
            gl = np.float32(0.0)
            if fm_on:
                for k in range(D):
                    s[k] = 0.0
                for g in range(n_groups):
                    for k in range(D):
                        s[k] += x[b, g * D + k]
                a = gfm[b]
                for g in range(n_groups):
                    for k in range(D):
                        t[g * D + k] = gx[b, g * D + k] + a * (s[k] - x[b, g * D + k])
                gl = glin[b]
                for j in range(n_dense):
                    ga[j] += gl * dense[b, j]
            else:
                for j in range(gd):
                    t[j] = gx[b, j]
            for f in range(n_fields):
                r = rows[b, f]
                if r > 0:
                    c = scale[b, f]
                    o = group[f] * D
                    for k in range(D):
                        gemb[r, k] += c * t[o + k]
                    if fm_on:
                        gw[r] += gl

    return forward, backward


_NONE = np.zeros(0, np.float32)


class _FusedEmbeddingBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emb, w, rows, group, n_groups, dense, a):
        fm_on = w is not None
        n, n_fields = rows.shape
        d = emb.shape[1]
        rows = rows.contiguous()
        dense = torch.empty(n, 0) if dense is None else dense.detach().contiguous()
        n_dense = dense.shape[1]
        x = torch.empty(n, n_groups * d + n_dense)
        fm, lin = (torch.empty(n), torch.empty(n)) if fm_on else (torch.empty(0), torch.empty(0))
        scale = torch.empty(n, n_fields)
        a_np = a.detach().reshape(-1).contiguous().numpy() if a is not None else np.zeros(n_dense, np.float32)
        w_np = w.detach().reshape(-1).contiguous().numpy() if fm_on else _NONE
        _kernels(d)[0](emb.detach().contiguous().numpy(), w_np, rows.numpy(), group.numpy(), dense.numpy(), a_np,
                       x.numpy(), fm.numpy(), lin.numpy(), scale.numpy(), fm_on)
        ctx.save_for_backward(rows, group, scale, x, dense, a if a is not None else torch.zeros(n_dense))
        ctx.meta = (emb.shape, None if w is None else w.shape, None if a is None else a.shape, fm_on)
        if fm_on:
            return x, fm, lin
        return x

    @staticmethod
    def backward(ctx, gx, gfm=None, glin=None):
        rows, group, scale, x, dense, a = ctx.saved_tensors
        emb_shape, w_shape, a_shape, fm_on = ctx.meta
        n = rows.shape[0]
        gx = torch.zeros_like(x) if gx is None else gx.contiguous()
        if fm_on:
            gfm = torch.zeros(n) if gfm is None else gfm.contiguous()
            glin = torch.zeros(n) if glin is None else glin.contiguous()
        else:  # the pooling kernel reads neither
            gfm = glin = torch.empty(0)
        gemb = torch.zeros(emb_shape)
        gw = torch.zeros(emb_shape[0]) if fm_on else torch.empty(0)
        ga = torch.zeros(dense.shape[1])
        _kernels(emb_shape[1])[1](rows.numpy(), group.numpy(), scale.numpy(), x.numpy(), gx.numpy(), gfm.numpy(),
                                  glin.numpy(), dense.numpy(), gemb.numpy(), gw.numpy(), ga.numpy(), fm_on)
        gdense = None
        if ctx.needs_input_grad[5]:  # a caller that differentiates w.r.t. the dense features
            gd = x.shape[1] - dense.shape[1]
            gdense = gx[:, gd:] + (glin.unsqueeze(1) * a.reshape(1, -1) if fm_on else 0.0)
        return (gemb, gw.view(w_shape) if fm_on else None, None, None, None, gdense,
                ga.view(a_shape) if a_shape is not None else None)


def fused_fm_block(emb: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, group: torch.Tensor,
                   n_groups: int, dense: torch.Tensor | None = None,
                   a: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """emb (N, D), w (N, 1) float32 CPU; rows (B, F) int64; group (F,) int64 in [0, G);
    dense (B, Dn) with its linear weights a (1, Dn) or (Dn,), optional → x (B, G·D + Dn) the
    pooled field embeddings then the dense columns, fm (B,) pairwise term over the G fields,
    lin (B,) Σ w[row] + a·dense."""
    if dense is not None and a is None:
        a = torch.zeros(dense.shape[1])
    return _FusedEmbeddingBlock.apply(emb, w, rows, group.contiguous(), n_groups, dense, a)


def fused_pool(emb: torch.Tensor, rows: torch.Tensor, group: torch.Tensor, n_groups: int,
               dense: torch.Tensor | None = None) -> torch.Tensor:
    """emb (N, D) float32 CPU, rows (B, F) int64, group (F,) → x (B, G·D + Dn): each group's
    mean over its non-padding rows (nn.embedding.gather_pool flattened), then `dense`."""
    return _FusedEmbeddingBlock.apply(emb, None, rows, group.contiguous(), n_groups, dense, None)


def prepare(d: int) -> None:
    """Compile (or load) the kernel pair for dimension `d` now: a model calls it when built."""
    _kernels(int(d))


def can_fuse(emb: torch.Tensor, rows: torch.Tensor) -> bool:
    """The kernels' domain: float32 table and int64 rows on the CPU."""
    return emb.dtype == torch.float32 and emb.device.type == "cpu" and rows.dtype == torch.int64 \
        and rows.device.type == "cpu"
