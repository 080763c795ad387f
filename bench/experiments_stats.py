"""Validate the experiment platform by simulation; prints one JSON object.

    .venv/bin/python bench/experiments_stats.py                 # full size: 2,000 sims, 1M users
    .venv/bin/python bench/experiments_stats.py --sims 200 --users 100000   # quick

- hashing: seconds to bucket 1M user ids;
- orthogonality: χ² independence of two layers' arms over `users` ids, and each layer's split
  against its configured traffic (χ² goodness of fit);
- A/A false-positive rates at α = 5 % (z-test, Welch, delta method, CUPED; naive daily peeking
  of the z-test; mSPRT peeked daily over 14 days, for a proportion and a mean);
- power: empirical detection rate at a known lift vs the calculator;
- CUPED variance ratio vs 1 − ρ²;
- report: build time on 100k users × 14 days (cumulative daily analysis + mSPRT) and plots.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from scipy import stats as sps

from funnelrec.core.config import from_dict
from funnelrec.experiments import ExperimentPlatform, ExperimentsConfig, buckets_of
from funnelrec.experiments import stats as st

ALPHA = 0.05


def rate(hits: np.ndarray) -> dict:
    k, n = int(np.sum(hits)), int(np.size(hits))
    lo, hi = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
    return {"rate": k / n, "ci95": [round(lo, 4), round(hi, 4)], "n": n}


def bench_assignment(n_users: int) -> dict:
    ids = [f"user_{i}" for i in range(n_users)]
    t = time.perf_counter()
    buckets_of("recall", ids)
    hash_s = time.perf_counter() - t
    cfg = from_dict(ExperimentsConfig, {
        "layers": [{"name": "recall"}, {"name": "rank"}],
        "experiments": [
            {"name": "swing", "layer": "recall", "traffic": 0.6, "variants": [
                {"name": "control"}, {"name": "b", "params": {"recall.q": 1}}, {"name": "c", "params": {"recall.q": 2}}]},
            {"name": "dcn", "layer": "rank", "buckets": [100, 600], "variants": [
                {"name": "control", "share": 0.8}, {"name": "b", "share": 0.2, "params": {"rank.model": "x"}}]},
        ]})
    p = ExperimentPlatform(cfg, {"recall.q", "rank.model"})
    t = time.perf_counter()
    a1 = p.assign_layer_many("recall", ids)
    a2 = p.assign_layer_many("rank", ids)
    assign_s = time.perf_counter() - t
    table = np.zeros((4, 3))
    np.add.at(table, (a1 + 1, a2 + 1), 1)
    chi2, p_ind, _, _ = sps.chi2_contingency(table)
    fit = {}
    for layer, codes, shares in (("recall", a1, [0.4, 0.2, 0.2, 0.2]), ("rank", a2, [0.5, 0.4, 0.1])):
        counts = np.bincount(codes + 1, minlength=len(shares))
        res = sps.chisquare(counts, np.array(shares) * n_users)
        fit[layer] = {"observed_shares": [round(c / n_users, 5) for c in counts], "configured": shares,
                      "chi2_p": round(float(res.pvalue), 4)}
    t = time.perf_counter()
    for u in ids[:20_000]:
        p.assign(u)
    per_assign_us = (time.perf_counter() - t) / 20_000 * 1e6
    return {"users": n_users, "hash_1layer_s": round(hash_s, 3), "assign_2layers_vectorized_s": round(assign_s, 3),
            "assign_one_user_us": round(per_assign_us, 2), "independence_chi2": round(float(chi2), 2),
            "independence_p": round(float(p_ind), 4), "split_fit": fit}


def bench_aa(sims: int, rng: np.random.Generator) -> dict:
    n, days, per_day = 2000, 14, 300
    out = {}
    # proportions: fixed horizon, naive daily peeking, mSPRT daily peeking
    xa = rng.binomial(per_day, 0.1, (sims, days)).cumsum(1)
    xb = rng.binomial(per_day, 0.1, (sims, days)).cumsum(1)
    nn = per_day * np.arange(1, days + 1)
    pz = np.array([[st.two_proportion_ztest(xa[s, t], nn[t], xb[s, t], nn[t]).p_value for t in range(days)] for s in range(sims)])
    out["ztest_fixed"] = rate(pz[:, -1] < ALPHA)
    out["ztest_naive_daily_peeking"] = rate(pz.min(1) < ALPHA)
    pa, pb = xa / nn, xb / nn
    var = pa * (1 - pa) / nn + pb * (1 - pb) / nn
    for tau in (0.005, 0.01, 0.02):
        pm = st.msprt_pvalues(pb - pa, var, tau**2)
        out[f"msprt_proportion_daily_peeking_tau{tau}"] = rate(pm[:, -1] < ALPHA)
    # means (log-normal per-user metric): Welch fixed, mSPRT daily peeking
    ya = rng.lognormal(0, 1, (sims, days, per_day))
    yb = rng.lognormal(0, 1, (sims, days, per_day))
    pw = np.array([st.welch_ttest(ya[s].ravel(), yb[s].ravel()).p_value for s in range(sims)])
    out["welch_fixed"] = rate(pw < ALPHA)

    def cum_mean_var(y):
        s1, s2 = y.sum(2).cumsum(1), (y**2).sum(2).cumsum(1)
        m = s1 / nn
        return m, (s2 / nn - m**2) * nn / (nn - 1) / nn

    ma, va = cum_mean_var(ya)
    mb, vb = cum_mean_var(yb)
    sd = math.sqrt(math.e * (math.e - 1))
    pm = st.msprt_pvalues(mb - ma, va + vb, (0.05 * sd) ** 2)
    out["msprt_mean_daily_peeking_tau0.05sd"] = rate(pm[:, -1] < ALPHA)
    pnaive = np.array([[st.difference_test(ma[s, t], va[s, t], mb[s, t], vb[s, t]).p_value for t in range(days)] for s in range(sims)])
    out["mean_naive_daily_peeking"] = rate(pnaive.min(1) < ALPHA)
    del ya, yb
    # delta method (clustered clicks) and CUPED
    pd, pc = [], []
    for _ in range(sims):
        imp = rng.poisson(6, (2, n)) + 1
        clicks = rng.binomial(imp, rng.beta(2, 18, (2, n)))
        pd.append(st.delta_method_ratio_test(clicks[0], imp[0], clicks[1], imp[1]).p_value)
        x = rng.gamma(2, 2, (2, n))
        y = 0.5 * x + rng.normal(0, 2, (2, n))
        pc.append(st.cuped_ttest(y[0], x[0], y[1], x[1]).p_value)
    out["delta_method_fixed"] = rate(np.array(pd) < ALPHA)
    out["cuped_fixed"] = rate(np.array(pc) < ALPHA)
    return out


def bench_power(sims: int, rng: np.random.Generator) -> dict:
    out = {}
    pa, pb = 0.10, 0.11
    for target in (0.5, 0.8):
        n = int(math.ceil(st.sample_size_two_proportions(pa, pb, power=target)))
        xa, xb = rng.binomial(n, pa, sims), rng.binomial(n, pb, sims)
        hits = np.array([st.two_proportion_ztest(a, n, b, n).p_value < ALPHA for a, b in zip(xa, xb)])
        out[f"proportion_0.10_to_0.11_power{target}"] = {"n_per_arm": n, "calculator": round(st.power_two_proportions(pa, pb, n), 4), "empirical": rate(hits)}
    # the price of always-valid inference: mSPRT peeked daily over 14 days at the n above
    days = 14
    per_day = int(math.ceil(n / days))
    nn = per_day * np.arange(1, days + 1)
    xa = rng.binomial(per_day, pa, (sims, days)).cumsum(1)
    xb = rng.binomial(per_day, pb, (sims, days)).cumsum(1)
    ra, rb = xa / nn, xb / nn
    var = ra * (1 - ra) / nn + rb * (1 - rb) / nn
    for tau in (0.005, 0.01):
        pm = st.msprt_pvalues(rb - ra, var, tau**2)
        out[f"msprt_proportion_0.10_to_0.11_14_daily_looks_tau{tau}"] = {"n_per_arm": int(nn[-1]), "empirical": rate(pm[:, -1] < ALPHA)}
    delta, sd = 0.05, 1.0
    n = int(math.ceil(st.sample_size_means(delta, sd, power=0.8)))
    hits = np.array([st.welch_ttest(rng.normal(0, sd, n), rng.normal(delta, sd, n)).p_value < ALPHA for _ in range(sims)])
    out["mean_delta0.05sd_power0.8"] = {"n_per_arm": n, "calculator": round(st.power_means(delta, sd, n), 4), "empirical": rate(hits)}
    out["mde_two_proportions_p0.10_n10000"] = round(st.mde_two_proportions(0.10, 10_000), 5)
    out["mde_means_sd1_n10000"] = round(st.mde_means(1.0, 10_000), 5)
    return out


def bench_cuped(rng: np.random.Generator) -> dict:
    out = {}
    for rho in (0.3, 0.5, 0.7, 0.9):
        x = rng.normal(0, 1, 200_000)
        y = rho * x + math.sqrt(1 - rho**2) * rng.normal(0, 1, x.size)
        adj = st.cuped_adjust(y, x, st.cuped_theta(y, x), x.mean())
        out[f"rho{rho}"] = {"var_ratio": round(float(adj.var() / y.var()), 4), "one_minus_rho2": round(1 - rho**2, 4)}
    return out


def bench_report(rng: np.random.Generator, n: int = 100_000, days: int = 14) -> dict:
    import polars as pl

    from funnelrec.experiments.report import MetricSpec, ReportConfig, build_report

    uid = np.tile(np.arange(n), days)
    imp = rng.poisson(5, n * days) + 1
    df = pl.DataFrame({"user_id": uid, "variant": np.where(uid % 2 == 0, "control", "b"),
                       "day": np.repeat(np.arange(1, days + 1), n), "impressions": imp,
                       "clicks": rng.binomial(imp, 0.1), "watch": rng.exponential(1.0, n * days)})
    cfg = ReportConfig(metrics=(MetricSpec("ctr", kind="ratio", numerator="clicks", denominator="impressions"), MetricSpec("watch")))
    t = time.perf_counter()
    rep = build_report(df, cfg)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    rep.figures()
    return {"rows": df.height, "users": n, "days": days, "metrics": 2, "build_s": round(build_s, 2),
            "figures_s": round(time.perf_counter() - t, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    res = {"alpha": ALPHA, "sims": args.sims}
    res["assignment"] = bench_assignment(args.users)
    res["aa_false_positive"] = bench_aa(args.sims, rng)
    res["power"] = bench_power(args.sims, rng)
    res["cuped_variance"] = bench_cuped(rng)
    res["report"] = bench_report(rng)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
