"""What the sequence and multi-domain rankers read beside the static fields: the user's behaviour
sequence, the target item's attention keys and the scenario/domain id — for the funnel's fine
ranker (train/candidate_ranker.py), in the batch layout of models/ranking/base.py:

    "seq", "seq_cat" (B, L) int64   embedding rows of the user's last L consumed items and of their
                                    tag (the first value of `tag_column`), oldest first, 0 = pad
    "seq_mask"       (B, L) bool    True at real positions
    "target", "target_cat" (B,)     the candidate's item-id row and tag row (DIN/DIEN/SIM attention)
    "domain"         (B,) int64     the user's value of `domain_column`, 0 = unknown / no value

The rows are read off the ranker's own item-row table (`RankFeatures.item_rows_`) at call time, so
an item added to the live catalogue (`extend_items`) has its rows here too, and the sequence items
share the one embedding table with the "item_id" field.

Where the history comes from:
- training: the interactions the label set's channels were fitted on, strictly before each
  sample's ts (`UserHistory`: no event at or after the label is visible, so neither the label nor
  anything that followed it leaks into the sequence);
- serving: the user's whole fit-time history, then the request's real-time history (the items
  consumed since the fit, `RequestState.history`, oldest first) appended — the last L of both.

    >>> import numpy as np
    >>> rows = np.array([[5, 50], [6, 60], [7, 70]])           # item rows: [item_id, tag] per item
    >>> b = BehaviourInputs(seq_len=2, id_col=0, tag_col=1).fit(
    ...     np.array([0, 0]), np.array([0, 1]), np.array([10, 20]), n_users=1)
    >>> out = b.inputs(rows, np.array([0]), np.array([2]), fresh=[np.array([2])], rows=np.array([0]))
    >>> out["seq"].tolist(), out["seq_cat"].tolist(), out["target"].tolist()
    ([[6, 7]], [[60, 70]], [7])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError, DataError, NotFittedError
from funnelrec.features.sequences import UserHistory


def domain_codes(users: pl.DataFrame, column: str) -> tuple[np.ndarray, list[str]]:
    """(n_users,) int64 domain id of each user — 1..K for the K values of `column` sorted, 0 for
    a null — and the K values. The id 0 is also what an unknown user or a user added after the fit
    gets, so a model sees one "no domain" bucket for all of them."""
    if column not in users.columns:
        raise DataError(f"rank.domain_column {column!r} is not a users-table column; it has: {', '.join(users.columns)}")
    col = users[column]
    null = col.is_null().to_numpy()
    values = col.cast(pl.Utf8).fill_null("").to_numpy().astype(str)
    names, codes = np.unique(values[~null], return_inverse=True)
    out = np.zeros(users.height, np.int64)
    out[~null] = codes.reshape(-1) + 1
    return out, [str(n) for n in names]


class BehaviourInputs:
    """The behaviour-sequence and domain block of the fine ranker's batch (see the module doc).

    seq_len: L (0 = no sequence keys); id_col / tag_col: columns of the item-row table holding the
    item-id row and the tag row (tag_col None: the item-id row stands in for the tag);
    domains: (n_users,) domain id per user (None: no "domain" key), n_domains = 1 + max id.
    """

    def __init__(self, seq_len: int = 0, id_col: int | None = None, tag_col: int | None = None,
                 domains: np.ndarray | None = None, n_domains: int = 1) -> None:
        if seq_len < 0:
            raise ConfigError(f"rank.seq_len must be ≥ 0, got {seq_len}")
        if seq_len and id_col is None:
            raise ConfigError("rank.seq_len > 0 needs the item_id field (rank.include_ids: true): sequence items "
                              "are item-id embedding rows")
        self.seq_len = seq_len
        self.id_col = id_col
        self.tag_col = tag_col
        self.domains = None if domains is None else np.asarray(domains, np.int64)
        self.n_domains = n_domains

    def fit(self, user_idx: np.ndarray, item_idx: np.ndarray, ts: np.ndarray, n_users: int) -> BehaviourInputs:
        """The fit-time history: events (user, item, ts) the sequences are read from."""
        self.history_ = UserHistory(n_users).fit(np.asarray(user_idx, np.int64), np.asarray(item_idx, np.int64),
                                                 np.asarray(ts, np.int64))
        return self

    def _sequences(self, u: np.ndarray, ts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) item indices (−1 = pad) and mask of users u (−1 or new: empty) before ts."""
        if not hasattr(self, "history_"):
            raise NotFittedError("BehaviourInputs is not fitted")
        n = self.history_.n_users
        known = (u >= 0) & (u < n)
        safe = np.where(known, u, 0)
        items, mask, _ = self.history_.sequences(safe, self.seq_len, ts)
        if not known.all():
            items[~known], mask[~known] = -1, False
        return items, mask

    def _with_fresh(self, items: np.ndarray, mask: np.ndarray, fresh: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Row r: its fit-time sequence with fresh[r] appended, the last L kept (right-aligned)."""
        L = self.seq_len
        for r, h in enumerate(fresh):
            if h is None or not len(h):
                continue
            h = np.asarray(h, np.int64).reshape(-1)
            row = np.concatenate([items[r][mask[r]], h])[-L:]
            items[r] = -1
            mask[r] = False
            items[r, L - len(row):] = row
            mask[r, L - len(row):] = True
        return items, mask

    def inputs(self, item_rows: np.ndarray, users: np.ndarray, items: np.ndarray, ts: np.ndarray | None = None,
               fresh: Sequence | None = None, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The block for pairs (users[m], items[m]). Training: `ts` (M,) — each pair's sequence is
        the history before it. Serving: ts None and `fresh` (one item-index array or None per
        request row) with `rows` (M,) the request row of each pair."""
        u = np.asarray(users, np.int64)
        i = np.asarray(items, np.int64)
        out: dict[str, np.ndarray] = {}
        if self.domains is not None:
            known = (u >= 0) & (u < len(self.domains))
            out["domain"] = np.where(known, self.domains[np.where(known, u, 0)], 0)
        if not self.seq_len:
            return out
        idr = item_rows[:, self.id_col]
        tagr = idr if self.tag_col is None else item_rows[:, self.tag_col]
        if fresh is not None and any(h is not None and len(h) for h in fresh):
            if rows is None or len(rows) != len(u):
                raise DataError("behaviour inputs: fresh history needs the request row of every pair")
            # one sequence per request row, then spread over its candidates
            first = np.full(len(fresh), -1, np.int64)
            first[rows[::-1]] = u[::-1]  # the user of each request row
            seq, mask = self._with_fresh(*self._sequences(first, None), fresh)
            seq, mask = seq[rows], mask[rows]
        else:
            seq, mask = self._sequences(u, ts)
        n_items = len(idr)
        ok = mask & (seq >= 0) & (seq < n_items)  # an item index the table lacks is dropped, not read
        safe = np.where(ok, seq, 0)
        out["seq"] = np.where(ok, idr[safe], 0)
        out["seq_cat"] = np.where(ok, tagr[safe], 0)
        out["seq_mask"] = ok
        out["target"] = idr[i]
        out["target_cat"] = tagr[i]
        return out
