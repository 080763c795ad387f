import numpy as np

from funnelrec.features.match import MatchCounter
from funnelrec.features.sequences import UserHistory


def _events(seed=0, n=300, n_users=7, n_items=20, unique_times=False):
    rng = np.random.default_rng(seed)
    t = rng.permutation(n) if unique_times else rng.integers(0, 50, n)
    return (rng.integers(0, n_users, n), rng.integers(0, n_items, n), t)


def test_sequences_equal_brute_force_and_never_leak():
    u, i, t = _events(unique_times=True)
    h = UserHistory(7).fit(u, i, t)
    rng = np.random.default_rng(1)
    qu, qt = rng.integers(0, 7, 100), rng.integers(0, 310, 100)
    items, mask, ts = h.sequences(qu, max_len=4, ts=qt)
    for k in range(100):
        ev = sorted((tt, ii) for uu, ii, tt in zip(u, i, t) if uu == qu[k] and tt < qt[k])
        last = ev[-4:]
        got_ts = ts[k][mask[k]].tolist()
        assert got_ts == [e[0] for e in last]
        assert all(x < qt[k] for x in got_ts)  # strictly before the sample: no leakage
        assert list(zip(got_ts, items[k][mask[k]].tolist())) == last  # oldest first
        assert (items[k][~mask[k]] == -1).all() and mask[k].sum() == len(last)
        assert not mask[k][: 4 - len(last)].any()  # left padding


def test_sequences_without_time_take_whole_history():
    u, i, t = _events(2)
    h = UserHistory(7).fit(u, i, t)
    assert h.lengths(np.arange(7)).tolist() == np.bincount(u, minlength=7).tolist()


def test_match_counts_equal_brute_force():
    u, i, t = _events(3)
    rng = np.random.default_rng(4)
    tags = [sorted(set(rng.integers(0, 5, rng.integers(0, 3)).tolist())) for _ in range(20)]
    m = MatchCounter(7).fit(u, i, t, item_values=tags)
    mi = MatchCounter(7).fit(u, i, t)  # item-id match
    qu, qi, qt = rng.integers(0, 7, 80), rng.integers(0, 20, 80), rng.integers(0, 55, 80)
    got, got_id, got_all = m.count(qu, qi, qt), mi.count(qu, qi, qt), m.count(qu, qi)
    for k in range(80):
        hist = [(ii, tt) for uu, ii, tt in zip(u, i, t) if uu == qu[k]]
        want = sum(1 for ii, tt in hist if tt < qt[k] for v in tags[qi[k]] if v in tags[ii])
        assert got[k] == want
        assert got_id[k] == sum(1 for ii, tt in hist if tt < qt[k] and ii == qi[k])
        assert got_all[k] == sum(1 for ii, _ in hist for v in tags[qi[k]] if v in tags[ii])
