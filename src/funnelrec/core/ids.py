"""External item ids → int64 keys: what exposure filters and cached results are keyed by, so
they survive a reload that re-indexes the catalogue.

    >>> item_key(42), item_key("42"), item_key("042") == item_key("042"), item_key("042") != 42
    (42, 42, True, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xxhash

from funnelrec.core.errors import DataError


def item_key(item_id: Any) -> int:
    """int64 key of one external item id: the id itself when it is an integer in int64 range (or
    such an integer written canonically as a string), else the signed xxh64 of its string."""
    if isinstance(item_id, bool):
        raise DataError(f"item_id must be an int or str, got {item_id!r}")
    s = str(item_id)
    try:
        v = int(item_id) if isinstance(item_id, int | np.integer) else int(s)
        if -(1 << 63) <= v < (1 << 63) and str(v) == s:  # canonical: "012", "1_0", " 1" are hashed
            return v
    except ValueError:
        pass
    try:
        h = xxhash.xxh64_intdigest(s.encode())
    except UnicodeEncodeError:
        raise DataError(f"item_id {s!r} is not valid Unicode text (a lone surrogate)") from None
    return h - (1 << 64) if h >= 1 << 63 else h


def item_keys(item_ids: np.ndarray) -> np.ndarray:
    """(N,) int64 keys of an array of external item ids (see `item_key`)."""
    a = np.asarray(item_ids)
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    return np.fromiter((item_key(x) for x in a.tolist()), dtype=np.int64, count=a.size)
