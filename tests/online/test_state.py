"""Real-time user state below HTTP (online/state.py and its wiring in the service and funnel).

- which events enter a history (consumptions; never an impression, nor a 0-s watch), the bound;
- the ranker's match features after a click equal those of a history CSR with the click added,
  built independently with scipy, and the hand formulas over the items' genres:

      count(u, i) = Σ_{j ∈ H_u} |genres(j) ∩ genres(i)|,   share = count / (|genres(i)| · |H_u|),
      ridge(u, i) = Σ_{j ∈ H_u} B_ji,  B = I − P·diag(1/diag P),  P = (XᵀX + λI)⁻¹   (EASE, numpy)

- the served answer's task scores are the model on exactly those features (and not on the
  fit-time ones): the click reached the rank stage of the next request.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from funnelrec.core.errors import DataError
from funnelrec.core.ids import item_key
from funnelrec.core.types import RequestState
from funnelrec.data.splits import random_split_by_user
from funnelrec.online.state import HISTORY_TYPES, enters_history
from funnelrec.pipeline.builder import FunnelBuilder
from funnelrec.pipeline.config import FunnelConfig
from funnelrec.pipeline.eventlog import EVENT_TYPES, POSITIVE_TYPES
from funnelrec.pipeline.service import RecommenderService, ServiceConfig
from funnelrec.recall.base import RecallContext
from tiny_world import make_world

T = 1_000_000_000 + 200 * 86400
LAM = 1.0


def test_the_history_holds_exactly_the_positive_event_types():
    assert set(HISTORY_TYPES) == set(POSITIVE_TYPES)
    want = {t: t in POSITIVE_TYPES for t in EVENT_TYPES}
    assert {t: enters_history(t, 1.0) for t in EVENT_TYPES} == want
    assert not enters_history("watch_time", 0.0) and enters_history("watch_time", 0.5)


@pytest.fixture(scope="module")
def ranked():
    world = make_world()
    split = random_split_by_user(world.dataset.interactions, seed=1)
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 20}, {"name": "tag", "n": 10}, {"name": "hot", "n": 10}],
                   "merge": {"total": 40}},
        "rank": {"epochs": 1, "user_columns": ["gender"], "item_columns": ["release_year", "genres"],
                 "match_columns": ["genres"], "ridge_lambda": LAM}})
    return FunnelBuilder(cfg).fit(world.dataset, split.train, labels=split.valid), split.train


def test_feedback_keeps_consumptions_only_and_the_last_history_n(ranked):
    f, _ = ranked
    svc = RecommenderService(f, ServiceConfig(history_n=3))
    ev = [{"item_id": 1, "type": "impression", "ts": T}, {"item_id": 2, "type": "watch_time", "value": 0, "ts": T},
          {"item_id": 3, "type": "follow", "ts": T}, {"item_id": 4, "type": "unfollow", "ts": T}]
    svc.feedback(None, "7", ev)
    assert len(svc.history.recent("7")) == 0 and len(svc.events.read()) == 4  # logged, not history
    svc.feedback(None, "7", [{"item_id": i, "type": "click", "ts": T + i} for i in (5, 6)])
    svc.feedback(None, "7", [{"item_id": 8, "type": "purchase", "ts": T + 9}, {"item_id": 7, "type": "like", "ts": T + 8}])
    h = svc.history.recent("7")
    assert h.keys.tolist() == [item_key(6), item_key(7), item_key(8)]  # bounded, sorted by ts within a call
    assert h.type_names() == ["click", "like", "purchase"] and h.ts.tolist() == [T + 6, T + 8, T + 9]
    svc.close()
    # a repeated item is handed to the funnel once, at its latest consumption; unknown ids dropped
    # (accepted here on purpose: by default feedback on an unknown item is refused, below)
    svc = RecommenderService(f, ServiceConfig(history_n=5, unknown_items="accept"))
    svc.feedback(None, "7", [{"item_id": i, "type": "click", "ts": T + t} for t, i in enumerate([6, 7, 6, "no-such"])])
    assert len(svc.history.recent("7")) == 4
    assert svc.recent_items(svc.current, "7").tolist() == f.dataset_.item_ids.indices([7, 6]).tolist()
    assert svc.recent_items(svc.current, "nobody") is None
    svc.close()


def _genres(f) -> list[set]:
    return [set(g or []) for g in f.dataset_.items["genres"].to_list()]


def _hand_match(f, train, history: set[int], items: np.ndarray) -> np.ndarray:
    """(len(items), 3) [log1p(count), share, ridge] by the formulas of the module doc."""
    g = _genres(f)
    I = f.dataset_.n_items
    X = np.zeros((f.dataset_.n_users, I))
    X[train["user_idx"].to_numpy(), train["item_idx"].to_numpy()] = 1.0
    P = np.linalg.inv(X.T @ X + LAM * np.eye(I))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    out = []
    for i in items.tolist():
        count = sum(len(g[j] & g[i]) for j in history)
        share = count / max(len(g[i]), 1) / max(len(history), 1)
        out.append([np.log1p(count), share, sum(B[j, i] for j in history)])
    return np.array(out)


def test_match_features_after_a_click_equal_a_history_with_it_added(ranked):
    f, train = ranked
    user = "3"
    u = f.dataset_.user_ids.index(user)
    seen = set(train.filter(train["user_idx"] == u)["item_idx"].to_list())
    x = next(i for i in range(f.dataset_.n_items) if i not in seen)
    svc = RecommenderService(f, ServiceConfig())
    svc.feedback(None, user, [{"item_id": int(f.dataset_.items["item_id"][x]), "type": "click", "ts": T}])
    fresh = svc.recent_items(svc.current, user)
    assert fresh.tolist() == [x]

    match = f.ranker_.match_
    H = sp.lil_matrix(f.stats_.history)  # independently: the fitted CSR with (u, x) set by scipy
    H[u, x] = 1.0
    H = sp.csr_matrix(H)
    rows = match.current_rows(np.array([u, -1]), [fresh, fresh])
    np.testing.assert_array_equal(rows[0].toarray(), H[u].toarray())
    np.testing.assert_array_equal(rows[1].toarray().ravel(), np.eye(f.dataset_.n_items)[x])  # unknown user

    ctx = RecallContext(time=T)
    [merged] = f.candidates(np.array([u]), ctx, RequestState(history=[fresh]))
    users = np.array([u])
    _, items, X_fresh = f.ranker_.features_.raw([merged], users, f.item_log_pop_, f.user_log_act_, fresh=[fresh])
    _, _, X_scipy = f.ranker_.features_.raw([merged], users, f.item_log_pop_, f.user_log_act_, history=H)
    n_match = len(match.names_)
    np.testing.assert_allclose(X_fresh, X_scipy, rtol=1e-6)
    np.testing.assert_allclose(X_fresh[:, -n_match:], _hand_match(f, train, seen | {x}, items), rtol=1e-4, atol=1e-5)
    _, _, X_fit = f.ranker_.features_.raw([merged], users, f.item_log_pop_, f.user_log_act_)
    assert not np.allclose(X_fit[:, -n_match:], X_fresh[:, -n_match:])  # the click does change them

    # the next served answer was scored on these features, not on the fit-time ones
    out = svc.recommend(user, k=10, context={"time": T})
    pos = np.array([int(np.flatnonzero(merged.items == i)[0]) for i in out.rec.items])
    import torch

    def logits(X: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return f.ranker_.model_(f.ranker_.batch(np.full(len(pos), u), merged.items[pos], X))["ctr"].numpy()

    np.testing.assert_allclose(out.rec.task_scores["ctr"], logits(X_fresh[pos]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out.rec.task_scores["ctr"], logits(X_fit[pos]), rtol=1e-5, atol=1e-6)
    assert x not in out.rec.items.tolist()
    svc.close()


def test_feedback_on_an_item_in_no_catalogue_is_refused_whole_and_counted(ranked):
    f, _ = ranked
    svc = RecommenderService(f, ServiceConfig())
    ok = [{"item_id": 1, "type": "impression", "ts": T}, {"item_id": 2, "type": "click", "ts": T}]
    with pytest.raises(DataError, match=r"events\[2\]\.item_id 'no-such' is not in the catalogue \(2 of 4"):
        svc.feedback(None, "7", [*ok, {"item_id": "no-such", "type": "click", "ts": T},
                                 {"item_id": "other", "type": "like", "ts": T}])
    # nothing of the call was stored: not the log, the filter, the history
    assert len(svc.events.read()) == 0 and len(svc.history.recent("7")) == 0
    assert not svc.exposure.filter("7", np.asarray([item_key(1)], np.int64), T).any()
    assert svc.metrics.unknown_items == 2
    # a follow names an author, not an item; an item upserted into the live catalogue is known
    svc.feedback(None, "7", [{"item_id": "someone", "type": "follow", "ts": T}])
    svc.upsert_items([{"item_id": 987654}])
    assert svc.feedback(None, "7", [{"item_id": 987654, "type": "click", "ts": T}])["logged"] == 1
    assert len(svc.events.read()) == 2
    svc.close()
