"""A seeded synthetic world: users, items and an impression log whose ground truth is known.

    >>> from funnelrec.data import load_dataset
    >>> ds = load_dataset("synthetic", n_users=200, n_items=100, n_interactions=2_000, seed=1)
    >>> world = ds.extras["world"]
    >>> ds.interactions.columns[:6]
    ['user_id', 'item_id', 'timestamp', 'click', 'like', 'watch_time']
    >>> world.true_preference(np.array([[0], [1]]), np.array([[0, 1, 2]])).shape
    (2, 3)

Generative model (d = `dim`, all embeddings drawn N(0, I/d), σ(x) = 1/(1+e^-x)):

Users. age_band, gender and region are categorical with skewed marginals (regions Zipf(0.8)).
Each user has two favourite tags f1, f2 drawn from the tag popularity (Zipf(0.8) over tags):

    u_raw = 1.0·(T[f1] + T[f2])/2 + 0.5·R[region] + 0.3·B[age_band] + 0.2·G[gender] + 0.5·ε

Items. Each author a has a home tag h(a) and an embedding A[a] = 0.6·T[h(a)] + 0.8·ε. Items are
assigned to authors by a Zipf(`author_exponent`) draw, so a few authors own many items. An item
carries 1–3 tags (the first is its author's home tag with probability 0.7, the rest follow the
tag popularity):

    v_raw = 1.0·mean(T[tags]) + 0.7·A[author] + 0.5·ε

Both are rescaled to per-coordinate RMS d^(-1/4), so for unrelated pairs s = u·v has std ≈ 1;
users and items sharing tags, author taste or region have larger s.

Popularity p_i ∝ rank_i^(-`popularity_exponent`) over a random ranking of the items (rank 1 =
most popular); its percentile ρ_i = 1 − (rank_i − 1)/N ∈ (0, 1] enters the truth, so the click
rate does not drift with the catalogue size. Items are published uniformly over
[start − `backlog_days`, end]; freshness at time t is φ_i(t) = exp(−max(0, t − publish_i)/τ), τ =
`freshness_days`. The oldest item is dated back to the start so that every moment has one.

Truth (`SyntheticWorld.true_preference`):

    P(click | u, i, t) = σ(b_c + w_s·s_ui + w_p·ρ_i + w_f·φ_i(t))
    P(like | click)    = σ(b_l + w_l·s_ui)
    watch_time | click = duration_i · σ(b_w + w_w·s_ui) · Γ(k, 1/k),   0 when not clicked
    position bias      : P(click) is multiplied by (1 + position)^(−`position_exponent`)

Impressions. User activity is heavy tailed: n_u = 1 + Multinomial(N − U, w), w_u ~
LogNormal(0, `activity_sigma`); timestamps are uniform over the period, and each user's n_u
impressions land on a random subset of them. Each impression is a
sampled softmax over a pool of `pool_size` candidates drawn (alias method) from the proposal
q = (1 − ε)·p + ε·uniform (ε = `exploration`): among the candidates already published at t, the
shown item is drawn with probability softmax_k(β·s_uk + w_f·φ_k(t)) — so exposure ≈ q_i·exp(β·s_ui + w_f·φ_i)
normalized, i.e. it mixes popularity and preference. The same user may see an item twice.
Labels come from `SyntheticWorld.sample_response`, the function a closed-loop simulator calls.

Preference drift (off by default; `drift_fraction` > 0 turns it on). At time start +
`drift_day` days, a `drift_fraction` share of the users (drawn by a generator of its own, so the
rest of the world is drawn exactly as without drift) get two new favourite tags f1', f2' (from
the tag popularity, neither of the old two), and their vector becomes

    u'_raw = 1.0·(T[f1'] + T[f2'])/2 + (the same region, age, gender and noise terms)

rescaled by the same factor as u_raw. Impressions from then on are drawn, and answered, with
u' (`SyntheticWorld.user_vectors_after_drift`); `user_vectors` and the truth methods stay the
pre-drift preferences; `world.at(t)` answers with those in force at t. Before the drift time
the log equals the log without drift.

Follows (off by default; `follows_per_user` > 0 turns them on). Each user follows
n_u ~ Poisson(`follows_per_user`) distinct authors (at most the number of authors with items),
drawn without replacement with probability ∝ exp(s(u, a)), where s(u, a) = u · ā_a and ā_a is the
mean vector of author a's items — users follow the authors whose items they like (Gumbel top-n_u).
Each edge's ts is uniform over [start − `backlog_days`, end). A generator of its own (seeded by
(seed, 2)) draws them after everything else, so the rest of the world is bit-identical with or
without follows; the table is `dataset.follows` (user_id, author_id, ts).

The interactions table is ordered by timestamp (so by timestamp within each user too);
user_id = user_idx and item_id = item_idx.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numba
import numpy as np
import polars as pl
import pyarrow as pa

from funnelrec.core.config import from_dict
from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import DATASETS
from funnelrec.data.dataset import Dataset
from funnelrec.data.schema import Schema

DAY = 86_400
AGE_BANDS = ("<18", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_SHARES = (0.08, 0.27, 0.30, 0.18, 0.10, 0.07)
GENDERS = ("M", "F", "U")
GENDER_SHARES = (0.49, 0.47, 0.04)
_CHUNK = 1 << 19  # impressions generated per chunk (bounds the memory of the random draws)

SCHEMA = Schema(
    interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time",
                  "click": "label", "like": "label", "watch_time": "label"},
    users={"user_id": "categorical", "age_band": "categorical", "gender": "categorical",
           "region": "categorical"},
    items={"item_id": "categorical", "tags": "multi", "author": "categorical",
           "publish_time": "time", "duration": "numeric"},
)


@dataclass(frozen=True)
class WorldConfig:
    """The knobs of the synthetic world (see the module docstring for the formulas)."""

    n_users: int = 10_000
    n_items: int = 2_000
    n_interactions: int = 200_000
    seed: int = 0
    dim: int = 16
    n_tags: int = 100
    n_authors: int = 0  # 0 → n_items // 5
    n_regions: int = 20
    start_time: int = 1_767_225_600  # 2026-01-01 00:00 UTC
    days: int = 60
    backlog_days: int = 180
    popularity_exponent: float = 1.0
    author_exponent: float = 1.0
    activity_sigma: float = 1.2
    exploration: float = 0.05
    pool_size: int = 8
    exposure_temperature: float = 1.0  # β
    click_bias: float = -4.5  # b_c
    affinity_weight: float = 1.5  # w_s
    popularity_weight: float = 1.0  # w_p
    freshness_weight: float = 0.5  # w_f
    freshness_days: float = 7.0  # τ
    like_bias: float = -4.0  # b_l
    like_weight: float = 1.0  # w_l
    watch_bias: float = 0.0  # b_w
    watch_weight: float = 1.0  # w_w
    watch_shape: float = 5.0  # k
    position_exponent: float = 0.6
    drift_day: int = 0  # preference drift at start + drift_day days (with drift_fraction > 0)
    drift_fraction: float = 0.0  # share of users whose favourite tags change then; 0 = no drift
    follows_per_user: float = 0.0  # mean authors a user follows (Poisson); 0 = no follows table

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_interactions", "dim", "n_tags", "n_regions", "days", "pool_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"WorldConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("n_authors", "backlog_days", "popularity_exponent", "author_exponent", "activity_sigma",
                     "exposure_temperature", "position_exponent"):
            if getattr(self, name) < 0:
                raise ConfigError(f"WorldConfig.{name} must be ≥ 0, got {getattr(self, name)}")
        if self.n_interactions < self.n_users:
            raise ConfigError(f"WorldConfig: n_interactions ({self.n_interactions}) must be ≥ n_users "
                              f"({self.n_users}); every user gets at least one impression")
        if not 0.0 <= self.exploration <= 1.0:
            raise ConfigError(f"WorldConfig.exploration must be in [0, 1], got {self.exploration}")
        if self.freshness_days <= 0 or self.watch_shape <= 0:
            raise ConfigError("WorldConfig.freshness_days and watch_shape must be > 0")
        if self.follows_per_user < 0:
            raise ConfigError(f"WorldConfig.follows_per_user must be ≥ 0, got {self.follows_per_user}")
        if not 0.0 <= self.drift_fraction <= 1.0:
            raise ConfigError(f"WorldConfig.drift_fraction must be in [0, 1], got {self.drift_fraction}")
        if self.drift_fraction > 0 and not 0 < self.drift_day < self.days:
            raise ConfigError(f"WorldConfig.drift_day must be in 1..{self.days - 1} (days - 1) when drift_fraction "
                              f"> 0, got {self.drift_day}")

    @property
    def end_time(self) -> int:
        return self.start_time + self.days * DAY

    @property
    def drift_time(self) -> int | None:
        """Unix time of the preference drift; None without drift."""
        return self.start_time + self.drift_day * DAY if self.drift_fraction > 0 else None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class SyntheticWorld:
    """The hidden truth of a synthetic dataset.

    user_vectors: (U, d) float32, item_vectors: (N, d) float32, popularity: (N,) float64
    summing to 1, publish_time: (N,) int64 unix s, duration: (N,) float32 seconds,
    item_tags: (N, 3) int64 tag ids (−1 pads), item_author: (N,) int64, user_region: (U,) int64.
    With preference drift: drifted_users (M,) int64 and user_vectors_after_drift (U, d) float32
    (the drifted users' rows replaced), in force from `config.drift_time`; otherwise empty / None.
    loved_tags (U, 2) int64: each user's two favourite tags (the codes of item_tags);
    loved_tags_after_drift the same after the drift (None without one; `at(t)` answers with it).
    Index arguments broadcast like numpy arrays: `true_preference(u[:, None], i[None, :])` is (U, N).
    """

    def __init__(self, config: WorldConfig, user_vectors: np.ndarray, item_vectors: np.ndarray,
                 popularity: np.ndarray, publish_time: np.ndarray, duration: np.ndarray,
                 item_tags: np.ndarray, item_author: np.ndarray, user_region: np.ndarray,
                 drifted_users: np.ndarray | None = None, user_vectors_after_drift: np.ndarray | None = None,
                 loved_tags: np.ndarray | None = None, loved_tags_after_drift: np.ndarray | None = None) -> None:
        self.config = config
        # (U, 2) tag codes (item_tags' codes) of each user's two favourite tags, before / after the drift
        self.loved_tags = loved_tags
        self.loved_tags_after_drift = loved_tags_after_drift
        self.drifted_users = np.empty(0, np.int64) if drifted_users is None else drifted_users
        self.user_vectors_after_drift = user_vectors_after_drift
        self.user_vectors = user_vectors
        self.item_vectors = item_vectors
        self.popularity = popularity
        self.publish_time = publish_time
        self.duration = duration
        self.item_tags = item_tags
        self.item_author = item_author
        self.user_region = user_region
        rank = np.empty(len(popularity), np.int64)
        rank[np.argsort(-popularity, kind="stable")] = np.arange(len(popularity))
        self.popularity_score = (1.0 - rank / len(popularity)).astype(np.float32)  # ρ: percentile

    def at(self, t: int) -> SyntheticWorld:
        """The world as it answers at unix time `t`: itself before the drift time (or without
        drift), else a view whose `user_vectors` are `user_vectors_after_drift`, so every truth
        method (`true_preference`, `sample_response`, …) answers with the drifted preferences, as
        the log's impressions after the drift are drawn and answered (module doc)."""
        drift = self.config.drift_time
        if self.user_vectors_after_drift is None or drift is None or t < drift:
            return self
        view = getattr(self, "_after_drift", None)
        if view is None:
            view = copy.copy(self)
            view.user_vectors, view.user_vectors_after_drift = self.user_vectors_after_drift, None
            view.loved_tags, view.loved_tags_after_drift = getattr(self, "loved_tags_after_drift", None), None
            self._after_drift = view
        return view

    @property
    def n_users(self) -> int:
        return len(self.user_vectors)

    @property
    def n_items(self) -> int:
        return len(self.item_vectors)

    def _indices(self, user_idx, item_idx) -> tuple[np.ndarray, np.ndarray]:
        u = np.asarray(user_idx)
        i = np.asarray(item_idx)
        for name, a, n in (("user_idx", u, self.n_users), ("item_idx", i, self.n_items)):
            if a.dtype.kind not in "iu":
                raise DataError(f"{name} must be integers, got dtype {a.dtype}")
            if a.size and (a.min() < 0 or a.max() >= n):
                raise DataError(f"{name} out of range 0..{n - 1}: got {int(a.min())}..{int(a.max())}")
        return u, i

    def affinity(self, user_idx, item_idx) -> np.ndarray:
        """s = u·v for broadcast index arrays; (U, 1) × (1, N) is one matrix product."""
        u, i = self._indices(user_idx, item_idx)
        if u.ndim == 2 and i.ndim == 2 and u.shape[1] == 1 and i.shape[0] == 1:
            return self.user_vectors[u[:, 0]] @ self.item_vectors[i[0]].T
        ub, ib = np.broadcast_arrays(u, i)
        return np.einsum("...d,...d->...", self.user_vectors[ub], self.item_vectors[ib])

    def freshness(self, item_idx, t=None) -> np.ndarray:
        """φ_i(t) = exp(−max(0, t − publish_i)/τ); t defaults to the end of the period."""
        t = self.config.end_time if t is None else np.asarray(t)
        age = np.maximum(0, t - self.publish_time[item_idx])
        return np.exp(-age / (self.config.freshness_days * DAY)).astype(np.float32)

    def _click_logit(self, s, item_idx, t) -> np.ndarray:
        c = self.config
        return (c.click_bias + c.affinity_weight * s + c.popularity_weight * self.popularity_score[item_idx]
                + c.freshness_weight * self.freshness(item_idx, t))

    def true_preference(self, user_idx, item_idx, t=None) -> np.ndarray:
        """P(click | u, i, t) = σ(b_c + w_s·s + w_p·ρ_i + w_f·φ_i(t)), without position bias."""
        u, i = self._indices(user_idx, item_idx)
        s = self.affinity(u, i)
        return _sigmoid(self._click_logit(s, i, t))

    def expected_watch_time(self, user_idx, item_idx, t=None, given_click: bool = False) -> np.ndarray:
        """E[watch_time] = P(click)·duration_i·σ(b_w + w_w·s); given_click drops the P(click) factor."""
        u, i = self._indices(user_idx, item_idx)
        s = self.affinity(u, i)
        c = self.config
        per_click = self.duration[i] * _sigmoid(c.watch_bias + c.watch_weight * s)
        return per_click if given_click else per_click * _sigmoid(self._click_logit(s, i, t))

    def sample_response(self, user_idx, item_idx, rng: np.random.Generator, position=None, t=None
                        ) -> dict[str, np.ndarray]:
        """Draw click (int8), like (int8) and watch_time (float32 s) for shown pairs.

        position: 0-based slot of each item on the screen; multiplies P(click) by
        (1 + position)^(−position_exponent). t: time of the impression (default: end of period).
        """
        u, i = self._indices(user_idx, item_idx)
        s = self.affinity(u, i)
        return self._respond(s, np.broadcast_to(i, s.shape), t, rng, position)

    def _respond(self, s, item_idx, t, rng: np.random.Generator, position=None) -> dict[str, np.ndarray]:
        c = self.config
        p = _sigmoid(self._click_logit(s, item_idx, t))
        if position is not None:
            pos = np.asarray(position)
            if pos.size and pos.min() < 0:
                raise DataError(f"position must be ≥ 0, got {int(pos.min())}")
            p = p * (1.0 + pos) ** (-c.position_exponent)
        shape = np.shape(p)
        click = rng.random(shape) < p
        # like and watch time exist only for clicks: draw them for the clicked pairs alone
        hit = np.flatnonzero(click)
        s_hit = np.broadcast_to(s, shape).ravel()[hit]
        items_hit = np.broadcast_to(item_idx, shape).ravel()[hit]
        like = np.zeros(shape, np.int8)
        like.ravel()[hit] = rng.random(hit.size) < _sigmoid(c.like_bias + c.like_weight * s_hit)
        watch = np.zeros(shape, np.float32)
        noise = rng.gamma(c.watch_shape, 1.0 / c.watch_shape, hit.size)
        share = _sigmoid(c.watch_bias + c.watch_weight * s_hit)
        watch.ravel()[hit] = np.maximum(self.duration[items_hit] * share * noise, 1e-3)
        return {"click": click.astype(np.int8), "like": like, "watch_time": watch}


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Weights ∝ rank^(−exponent) over a random ranking, summing to 1."""
    w = np.arange(1, n + 1, dtype=np.float64) ** (-exponent)
    w = w[rng.permutation(n)]
    return w / w.sum()


def _rescale(x: np.ndarray, dim: int) -> np.ndarray:
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2)) or 1.0
    return (x * (dim ** -0.25 / rms)).astype(np.float32)


@numba.njit(cache=True)
def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method: draw j uniform, keep j with prob[j] else take alias[j]."""
    n = len(p)
    prob = p * n
    alias = np.arange(n)
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    ns = 0
    nl = 0
    for j in range(n):
        if prob[j] < 1.0:
            small[ns] = j
            ns += 1
        else:
            large[nl] = j
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        g = large[nl - 1]
        alias[s] = g
        prob[g] = prob[g] + prob[s] - 1.0
        if prob[g] < 1.0:
            nl -= 1
            small[ns] = g
            ns += 1
    for k in range(nl):
        prob[large[k]] = 1.0
    for k in range(ns):
        prob[small[k]] = 1.0
    return prob, alias


@numba.njit(parallel=True, cache=True)
def _choose_exposures(users, times, U, V, publish, prob, alias, r_pool, r_pick, fallback, beta, w_f, tau):
    """For each impression: draw a pool from the alias table, then one published candidate with
    probability softmax_k(β·s_k + w_f·φ_k) (inverse CDF on one uniform: the Gumbel-max law
    without a logarithm per candidate).

    V, publish, prob and alias are in popularity order (row 0 = most popular), so the hot
    items' rows share a few cache lines. Returns the chosen rows (n,) int64 in that order and
    their affinities s (n,) float32.
    """
    n, k_pool = r_pool.shape
    n_items = len(prob)
    d = U.shape[1]
    out = np.empty(n, np.int64)
    out_s = np.empty(n, np.float32)
    for r in numba.prange(n):
        u = users[r]
        t = times[r]
        cand = np.empty(k_pool, np.int64)
        aff = np.empty(k_pool, np.float32)
        score = np.empty(k_pool, np.float64)
        m = 0
        top = -np.inf
        for k in range(k_pool):
            x = r_pool[r, k] * n_items
            j = min(int(x), n_items - 1)
            c = j if (x - j) < prob[j] else alias[j]
            age = t - publish[c]
            if age < 0:
                continue
            s = np.float32(0.0)
            for q in range(d):
                s += U[u, q] * V[c, q]
            z = beta * s
            if age < 40.0 * tau:  # beyond, exp(−age/τ) < 5e-18: below double precision of z
                z += w_f * np.exp(-age / tau)
            cand[m] = c
            aff[m] = s
            score[m] = z
            top = max(top, z)
            m += 1
        if m == 0:  # no candidate published yet: show the oldest item
            best_s = np.float32(0.0)
            for q in range(d):
                best_s += U[u, q] * V[fallback, q]
            out[r] = fallback
            out_s[r] = best_s
            continue
        total = 0.0
        for k in range(m):
            score[k] = np.exp(score[k] - top)
            total += score[k]
        target = r_pick[r] * total
        k = 0
        acc = score[0]
        while acc <= target and k < m - 1:
            k += 1
            acc += score[k]
        out[r] = cand[k]
        out_s[r] = aff[k]
    return out, out_s


def _drift_users(c: WorldConfig, fav: np.ndarray, tags_e: np.ndarray, tag_pop: np.ndarray, u_raw: np.ndarray,
                 user_vectors: np.ndarray, region_e: np.ndarray, age_e: np.ndarray, gender_e: np.ndarray,
                 noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(drifted users (M,), the (U, d) vectors after the drift, their (M, 2) new favourite tags):
    M = round(drift_fraction·U) users
    get two new favourite tags, neither of their old two (redrawn until so), and u'_raw with the
    same region, age, gender and noise terms, scaled like u_raw (module doc). A generator of its
    own (seeded by (seed, 1)) keeps the main stream as it is without drift."""
    nu, d = u_raw.shape
    drng = np.random.default_rng([c.seed, 1])
    users = np.sort(drng.permutation(nu)[: int(round(c.drift_fraction * nu))]).astype(np.int64)
    new = drng.choice(c.n_tags, (len(users), 2), p=tag_pop)
    old = fav[users]
    for _ in range(1000):
        bad = (new[:, :, None] == old[:, None, :]).any(2)
        if not bad.any():
            break
        new[bad] = drng.choice(c.n_tags, int(bad.sum()), p=tag_pop)
    scale = d ** -0.25 / (np.sqrt(np.mean(u_raw.astype(np.float64) ** 2)) or 1.0)  # as _rescale(u_raw)
    raw = (0.5 * (tags_e[new[:, 0]] + tags_e[new[:, 1]]) + 0.5 * region_e[users] + 0.3 * age_e[users]
           + 0.2 * gender_e[users] + 0.5 * noise[users])
    after = user_vectors.copy()
    after[users] = (raw * scale).astype(np.float32)
    return users, after, new


def _list_column(values: list[str], codes: np.ndarray, lengths: np.ndarray) -> pl.Series:
    """A List[str] column from flat codes and per-row lengths, without Python lists per row."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values)).cast(pa.string())
    return pl.Series(pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), flat)))


def _strings(names: list[str] | tuple[str, ...], codes: np.ndarray) -> pl.Series:
    return pl.Series(list(names), dtype=pl.String).gather(codes)


def generate_world(config: WorldConfig) -> tuple[SyntheticWorld, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Draw the world and its impression log: (world, interactions, users, items)."""
    c = config
    rng = np.random.default_rng(c.seed)
    d, nu, ni = c.dim, c.n_users, c.n_items
    n_authors = c.n_authors or max(1, ni // 5)

    def emb(n: int) -> np.ndarray:
        return rng.standard_normal((n, d), dtype=np.float32) / np.float32(np.sqrt(d))

    tags_e, regions_e, ages_e, genders_e = emb(c.n_tags), emb(c.n_regions), emb(len(AGE_BANDS)), emb(len(GENDERS))
    tag_pop = _zipf_weights(c.n_tags, 0.8, rng)

    # users
    age = rng.choice(len(AGE_BANDS), nu, p=AGE_SHARES)
    gender = rng.choice(len(GENDERS), nu, p=GENDER_SHARES)
    region = rng.choice(c.n_regions, nu, p=_zipf_weights(c.n_regions, 0.8, rng))
    fav = rng.choice(c.n_tags, (nu, 2), p=tag_pop)
    noise = emb(nu)  # drawn where the expression below drew it: the main stream is unchanged
    u_raw = (0.5 * (tags_e[fav[:, 0]] + tags_e[fav[:, 1]]) + 0.5 * regions_e[region] + 0.3 * ages_e[age]
             + 0.2 * genders_e[gender] + 0.5 * noise)
    user_vectors = _rescale(u_raw, d)
    drifted, after, loved_after = None, None, None
    if c.drift_fraction > 0:
        drifted, after, new_tags = _drift_users(c, fav, tags_e, tag_pop, u_raw, user_vectors, regions_e[region],
                                      ages_e[age], genders_e[gender], noise)
        loved_after = fav.copy()
        loved_after[drifted] = new_tags
    del u_raw, noise

    # items
    home = rng.choice(c.n_tags, n_authors, p=tag_pop)
    author_e = 0.6 * tags_e[home] + 0.8 * emb(n_authors)
    author = rng.choice(n_authors, ni, p=_zipf_weights(n_authors, c.author_exponent, rng))
    n_tags_item = rng.choice(3, ni, p=(0.4, 0.4, 0.2)) + 1
    tags = rng.choice(c.n_tags, (ni, 3), p=tag_pop)
    tags[:, 0] = np.where(rng.random(ni) < 0.7, home[author], tags[:, 0])
    keep = np.arange(3)[None, :] < n_tags_item[:, None]
    keep[:, 1] &= tags[:, 1] != tags[:, 0]
    keep[:, 2] &= (tags[:, 2] != tags[:, 0]) & (tags[:, 2] != tags[:, 1])
    item_tags = np.where(keep, tags, -1)
    tag_mean = (tags_e[tags] * keep[:, :, None]).sum(1) / keep.sum(1, keepdims=True)
    item_vectors = _rescale(tag_mean + 0.7 * author_e[author] + 0.5 * emb(ni), d)
    popularity = _zipf_weights(ni, c.popularity_exponent, rng)
    publish = rng.integers(c.start_time - c.backlog_days * DAY, c.end_time, ni, dtype=np.int64)
    oldest = int(np.argmin(publish))
    publish[oldest] = min(publish[oldest], c.start_time)
    duration = np.clip(rng.lognormal(np.log(180.0), 0.7, ni), 10, 3600).astype(np.float32)
    world = SyntheticWorld(c, user_vectors, item_vectors, popularity, publish, duration, item_tags, author, region,
                           drifted, after, fav, loved_after)

    # impressions in time order: sorted uniform times, each user's rows scattered over them
    weights = rng.lognormal(0.0, c.activity_sigma, nu)
    counts = 1 + rng.multinomial(c.n_interactions - nu, weights / weights.sum())
    users_col = np.repeat(np.arange(nu, dtype=np.int64), counts)
    rng.shuffle(users_col)
    times = rng.integers(c.start_time, c.end_time, c.n_interactions, dtype=np.int64)
    times.sort()
    # with drift, row u + U of the stacked user matrix is user u after the drift
    u_table, u_rows = user_vectors, users_col
    if after is not None:
        u_table = np.concatenate([user_vectors, after])
        u_rows = users_col + nu * (times >= c.drift_time)
    by_pop = np.argsort(-popularity, kind="stable")  # internal item order for cache locality
    v_hot, publish_hot = np.ascontiguousarray(item_vectors[by_pop]), publish[by_pop]
    prob, alias = _alias_table((1.0 - c.exploration) * popularity[by_pop] + c.exploration / ni)
    fallback = int(np.flatnonzero(by_pop == oldest)[0])
    items_col = np.empty(c.n_interactions, np.int64)
    click = np.empty(c.n_interactions, np.int8)
    like = np.empty(c.n_interactions, np.int8)
    watch = np.empty(c.n_interactions, np.float32)
    tau = float(c.freshness_days * DAY)
    for a in range(0, c.n_interactions, _CHUNK):
        b = min(a + _CHUNK, c.n_interactions)
        r_pool = rng.random((b - a, c.pool_size))
        r_pick = rng.random(b - a)
        row, s = _choose_exposures(u_rows[a:b], times[a:b], u_table, v_hot, publish_hot, prob, alias,
                                   r_pool, r_pick, fallback, float(c.exposure_temperature),
                                   float(c.freshness_weight), tau)
        it = by_pop[row]
        items_col[a:b] = it
        resp = world._respond(s, it, times[a:b], rng)
        click[a:b], like[a:b], watch[a:b] = resp["click"], resp["like"], resp["watch_time"]

    del u_rows, u_table
    inter = pl.DataFrame({"user_id": users_col, "item_id": items_col, "timestamp": times,
                          "click": click, "like": like, "watch_time": watch})
    del users_col, items_col, times, click, like, watch
    users = pl.DataFrame({
        "user_id": np.arange(nu, dtype=np.int64),
        "age_band": _strings(AGE_BANDS, age),
        "gender": _strings(GENDERS, gender),
        "region": _strings([f"r{r:02d}" for r in range(c.n_regions)], region),
    })
    tag_names = [f"t{t:03d}" for t in range(c.n_tags)]
    items = pl.DataFrame({
        "item_id": np.arange(ni, dtype=np.int64),
        "tags": _list_column(tag_names, item_tags[item_tags >= 0], keep.sum(1)),
        "author": pl.Series([f"a{a:06d}" for a in range(n_authors)]).gather(author),
        "publish_time": publish,
        "duration": duration,
    })
    return world, inter, users, items


def generate_follows(config: WorldConfig, world: SyntheticWorld) -> pl.DataFrame:
    """The follow graph of the module doc: (user_id, author_id, ts), one row per edge."""
    c = config
    rng = np.random.default_rng((c.seed, 2))
    n_authors = int(world.item_author.max()) + 1 if world.n_items else 0
    counts = np.bincount(world.item_author, minlength=n_authors).astype(np.float64)
    has = counts > 0
    mean = np.zeros((n_authors, world.item_vectors.shape[1]), np.float64)
    np.add.at(mean, world.item_author, world.item_vectors.astype(np.float64))
    mean[has] /= counts[has, None]
    k = np.minimum(rng.poisson(c.follows_per_user, world.n_users), int(has.sum()))
    users, authors = [], []
    for u in np.flatnonzero(k):
        s = mean @ world.user_vectors[u].astype(np.float64)
        key = np.where(has, s + rng.gumbel(size=n_authors), -np.inf)  # Gumbel top-k ~ sampling ∝ exp(s)
        top = np.argpartition(-key, k[u] - 1)[: k[u]]
        users.append(np.full(k[u], u, np.int64))
        authors.append(np.sort(top))
    u_col = np.concatenate(users) if users else np.zeros(0, np.int64)
    a_col = np.concatenate(authors) if authors else np.zeros(0, np.int64)
    ts = rng.integers(c.start_time - c.backlog_days * DAY, c.end_time, len(u_col), dtype=np.int64)
    names = pl.Series([f"a{a:06d}" for a in range(max(n_authors, 1))])
    return pl.DataFrame({"user_id": u_col, "author_id": names.gather(a_col), "ts": ts})


@DATASETS.register("synthetic")
def load_synthetic(n_users: int = 10_000, n_items: int = 2_000, n_interactions: int = 200_000, seed: int = 0,
                   **config) -> Dataset:
    """A synthetic world (see the module doc); `config` holds the other `WorldConfig` knobs.

    The ground truth is in `dataset.extras["world"]` (a `SyntheticWorld`).
    """
    cfg = from_dict(WorldConfig, {"n_users": n_users, "n_items": n_items, "n_interactions": n_interactions,
                                  "seed": seed, **config})
    world, inter, users, items = generate_world(cfg)
    follows = generate_follows(cfg, world) if cfg.follows_per_user > 0 else None
    ds = Dataset.build("synthetic", inter, SCHEMA, users=users, items=items,
                       extras={"world": world, "config": dataclasses.asdict(cfg)}, dense_ids=True, follows=follows)
    return ds
