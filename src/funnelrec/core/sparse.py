"""Request-path helpers on scipy CSR arrays (no scipy indexing: it costs ~1 ms per call).

- `take_rows(m, rows)`: rows of m as a new CSR; a row index outside [0, m.shape[0]) gives an
  empty row (an unknown user has no history).

    >>> import numpy as np, scipy.sparse as sp
    >>> m = sp.csr_matrix(np.array([[0, 2, 0], [1, 0, 3]], np.float32))
    >>> take_rows(m, np.array([1, -1, 0])).toarray().tolist()
    [[1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n): the positions of many CSR slices."""
    lens = np.asarray(lens, dtype=np.int64)
    ends = np.cumsum(lens)
    return np.repeat(np.asarray(starts, dtype=np.int64) - ends + lens, lens) + np.arange(ends[-1] if len(ends) else 0)


def take_rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    rows = np.asarray(rows, dtype=np.int64)
    ok = (rows >= 0) & (rows < m.shape[0])
    safe = np.where(ok, rows, 0)
    starts = m.indptr[safe].astype(np.int64)
    lens = np.where(ok, m.indptr[safe + 1] - starts, 0)
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=indptr[1:])
    pos = ranges(starts, lens)
    return sp.csr_matrix((m.data[pos], m.indices[pos], indptr), shape=(len(rows), m.shape[1]))

