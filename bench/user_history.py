"""Per-request cost of `UserHistory.matrix` (every recall channel calls it on every request):
the CSR row gather against scipy's fancy row indexing it replaced, on MovieLens-100k.

    python bench/user_history.py [--repeat 2000]

Prints one JSON object: µs per call for batches of 1 and 64 users, gather vs scipy indexing.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp

from funnelrec.data import load_dataset
from funnelrec.data.dataset import TrainData
from funnelrec.recall._common import UserHistory


def scipy_rows(m: sp.csr_matrix, users: np.ndarray) -> sp.csr_matrix:
    """The previous implementation: fancy row indexing, unknown users zeroed by a diagonal."""
    ok = (users >= 0) & (users < m.shape[0])
    sub = m[np.where(ok, users, 0)]
    if not ok.all():
        sub = sp.csr_matrix(sp.diags(ok.astype(np.float32)) @ sub)
        sub.eliminate_zeros()
    return sub


def per_call_us(fn, repeat: int) -> float:
    for _ in range(20):
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    ds = load_dataset("movielens-100k")
    h = UserHistory(TrainData(ds, ds.interactions).csr)
    out = {"dataset": "movielens-100k", "repeat": args.repeat}
    for batch in (1, 64):
        users = (np.arange(batch) * 7 % ds.n_users).astype(np.int64)
        users[-1] = -1  # an unknown user in every batch
        H, _ = h.matrix(users, None)
        assert (H != scipy_rows(h.seen, users)).nnz == 0
        out[f"gather_us_batch{batch}"] = round(per_call_us(lambda u=users: h.matrix(u, None), args.repeat), 1)
        # the old matrix(): the rows of the weights and of the seen matrix, each by fancy indexing
        out[f"scipy_us_batch{batch}"] = round(
            per_call_us(lambda u=users: (scipy_rows(h.weights, u), scipy_rows(h.seen, u)), args.repeat), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
