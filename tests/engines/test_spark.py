"""The Spark engine (local[2], a real JVM) against the in-process channels and independent oracles
on a small seeded world: the caps are the in-process samples, co-occurrence counts equal scipy's
exactly, similarities equal a float64 brute force within 1e-9, the neighbour lists (order, ties)
and every channel's recall answers equal the in-process fit, hot/fresh equal too.

One SparkSession for the module, stopped at the end."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import yaml

pytest.importorskip("pyspark")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("no Java (apt-get install openjdk-17-jre-headless)", allow_module_level=True)

from funnelrec.core.errors import ConfigError  # noqa: E402
from funnelrec.engines import EngineSpec  # noqa: E402
from funnelrec.engines.spark import cap_sample, spark_session  # noqa: E402
from funnelrec.engines.tables import read_table  # noqa: E402
from funnelrec.pipeline.builder import FunnelBuilder  # noqa: E402
from funnelrec.pipeline.config import FunnelConfig  # noqa: E402
from funnelrec.recall._common import cap_rows  # noqa: E402
from funnelrec.recall.swing import SwingConfig  # noqa: E402
from tiny_world import make_world  # noqa: E402

# small inputs: interpreted expressions (no whole-stage code generation) and no adaptive
# re-planning cost less than they save
CONF = {"spark.sql.codegen.wholeStage": "false", "spark.sql.adaptive.enabled": "false"}
SPEC = EngineSpec("spark", master="local[2]", shuffle_partitions=1, conf=CONF)


@pytest.fixture(scope="module")
def session():
    s = spark_session(SPEC)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def world():
    return make_world(seed=3, n_users=70, n_items=45, n_inter=1100)


FUNNEL_YAML = """
engine: {name: spark, master: "local[2]", shuffle_partitions: 1, work_dir: WORK,
         conf: {spark.sql.codegen.wholeStage: "false", spark.sql.adaptive.enabled: "false"}}
recall:
  channels:
    - {name: itemcf, params: {k: 6, similarity: asymmetric, asymmetry: 0.3, user_damping: iuf,
                              max_items_per_user: 12, seed: 5}}
    - {name: swing, params: {k: 6, max_users_per_item: 9, max_items_per_user: 14, seed: 11}}
    - {name: swing_pop, type: swing, params: {k: 4, alpha: 0.5, popularity_power: 0.3, max_users_per_item: 0,
                                              max_items_per_user: 0, cosine_blend: 0.25}}
    - {name: usercf, params: {k: 7, max_users_per_item: 6, seed: 2}}
    - {name: hot, params: {tau_days: 30.0, max_items: 20}}
    - {name: fresh, params: {max_items: 10, tau_days: 30.0}}
"""


@pytest.fixture(scope="module")
def fitted(session, world, tmp_path_factory):
    """Every channel of a funnel YAML with `engine: spark` fitted by FunnelBuilder (the Spark
    tables kept in WORK for the table checks), and the same config fitted in-process."""
    work = tmp_path_factory.mktemp("spark_tables")
    cfg = FunnelConfig.from_dict(yaml.safe_load(FUNNEL_YAML.replace("WORK", str(work))))
    assert cfg.engine.name == "spark" and cfg.engine.conf == CONF
    spark = FunnelBuilder(cfg).fit_channels(world)
    local = FunnelBuilder(dataclasses.replace(cfg, engine=EngineSpec())).fit_channels(world)
    assert all(type(spark[n]) is type(local[n]) for n in local)
    return spark, local, work


def test_engine_name_is_checked():
    with pytest.raises(ConfigError, match="engine.name 'flink'"):
        FunnelConfig.from_dict({"engine": {"name": "flink"}})


def _csr_equal(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=0)


def _rows(table: pl.DataFrame, key: str, other: str) -> dict[int, list[int]]:
    t = table.sort([key, "rank"])
    return {k: g[other].to_list() for (k,), g in t.group_by([key], maintain_order=True)}


def _oracle_top(vals: dict[tuple[int, int], float], n_rows: int, k: int) -> dict[int, list[int]]:
    """top-k of each row by (−value, column); values rounded at 1e-12 so that equal sums computed
    in another order stay ties (the kernels' ties go to the lower index)."""
    out: dict[int, list[int]] = {}
    for r in range(n_rows):
        row = sorted(((-round(v, 12), c) for (i, c), v in vals.items() if i == r and v > 0))
        if row:
            out[r] = [c for _, c in row[:k]]
    return out


def test_cap_sample_is_the_in_process_sample(fitted, session, world):
    """The items-per-user cap of itemCF and Swing (CSR order ascending; userCF's descending
    order is checked by its item_users table below)."""
    _, _, work = fitted
    pairs = session.read.parquet(str(work / "interactions.parquet")).select("user", "item").distinct()
    got = cap_sample(pairs, "user", "item", 9, 123).toPandas()
    want = cap_rows(world.csr, 9, 123).tocoo()
    assert len(got) == want.nnz and want.nnz < world.csr.nnz  # the cap is active
    assert set(zip(got.user, got.item)) == set(zip(want.row.tolist(), want.col.tolist()))


def test_itemcf_counts_and_similarities_match_scipy(fitted, world):
    spark, local, work = fitted
    cfg = local["itemcf"].config
    Rc = cap_rows(world.csr, cfg.max_items_per_user, cfg.seed).astype(np.float64)
    lens = np.diff(Rc.indptr).astype(np.float64)
    w = 1.0 / np.log1p(np.maximum(lens, 1.0))
    counts = (Rc.T @ Rc).toarray()
    C = (Rc.T @ sp.diags(w) @ Rc).toarray()
    deg = counts.diagonal()
    sim = C / (np.outer(deg ** 0.3, deg ** 0.7))
    np.fill_diagonal(sim, 0.0)
    t = read_table(work / "itemcf", "neighbours")
    i, j = t["item"].to_numpy(), t["neighbour"].to_numpy()
    np.testing.assert_array_equal(t["support"].to_numpy(), counts[i, j].astype(np.int64))
    np.testing.assert_allclose(t["similarity"].to_numpy(), sim[i, j], rtol=0, atol=1e-9)
    vals = {(a, b): sim[a, b] for a in range(sim.shape[0]) for b in range(sim.shape[1]) if counts[a, b] > 0 and a != b}
    assert _rows(t, "item", "neighbour") == _oracle_top(vals, sim.shape[0], cfg.k)
    _csr_equal(spark["itemcf"].neighbours_, local["itemcf"].neighbours_)


def _swing_brute(R: sp.csr_matrix, cfg: SwingConfig) -> dict[tuple[int, int], tuple[float, int]]:
    """The seed's Swing by its definition: Python loops, math.fsum, on the in-process capped
    matrices. (i, j) → (similarity, number of contributing user pairs)."""
    pop = np.maximum(R.getnnz(axis=0).astype(np.float64), 1.0)
    Ri = cap_rows(R, cfg.max_items_per_user, cfg.seed)
    Ut = cap_rows(sp.csr_matrix(Ri.T), cfg.max_users_per_item, cfg.seed + 1)
    items_of = [set(Ri.indices[Ri.indptr[u]:Ri.indptr[u + 1]]) for u in range(Ri.shape[0])]
    wu = [max(len(s), 1) ** -cfg.user_weight_power for s in items_of]
    terms: dict[tuple[int, int], list[float]] = {}
    for i in range(Ut.shape[0]):
        us = sorted(Ut.indices[Ut.indptr[i]:Ut.indptr[i + 1]])
        for a in range(len(us)):
            for b in range(a + 1, len(us)):
                common = items_of[us[a]] & items_of[us[b]]
                if len(common) < 2:
                    continue
                for j in common - {i}:
                    terms.setdefault((i, j), []).append(wu[us[a]] * wu[us[b]] / (cfg.alpha + len(common)))
    return {(i, j): (math.fsum(ts) / (pop[i] * pop[j]) ** cfg.popularity_power, len(ts)) for (i, j), ts in terms.items()}


@pytest.mark.parametrize("name", ["swing", "swing_pop"])
def test_swing_matches_the_definition_and_the_kernel(fitted, world, name):
    spark, local, work = fitted
    cfg = local[name].config
    brute = _swing_brute(world.csr, cfg)
    t = read_table(work / name, "neighbours")
    assert t.height > 3 * world.n_items // 2
    for i, j, s, n in zip(t["item"], t["neighbour"], t["similarity"], t["support"]):
        assert abs(s - brute[(i, j)][0]) <= 1e-9 and n == brute[(i, j)][1]
    assert _rows(t, "item", "neighbour") == _oracle_top({p: v for p, (v, _) in brute.items()}, world.n_items, cfg.k)
    _csr_equal(spark[name].neighbours_, local[name].neighbours_)  # swing_pop: with the cosine blend


def test_usercf_tables_and_user_neighbours(fitted, world):
    spark, local, work = fitted
    ch = local["usercf"]
    W = ch.weighted_item_users_
    got = spark["usercf"].weighted_item_users_
    _csr_equal(got, W)
    np.testing.assert_array_equal(got.data, W.data)  # float32 weights, bit-equal
    # the user-user table against a dense product: sim(u, v) = Σ_{i ∈ I_u} W[i, v] / sqrt(|I_u|·|I_v|)
    R = world.csr.astype(np.float64)
    ln = np.maximum(np.diff(world.csr.indptr), 1).astype(np.float64)
    S = (R @ W.astype(np.float64)).toarray() / np.sqrt(np.outer(ln, ln))
    np.fill_diagonal(S, 0.0)
    t = read_table(work / "usercf", "user_neighbours")
    np.testing.assert_allclose(t["similarity"].to_numpy(), S[t["user"].to_numpy(), t["neighbour"].to_numpy()],
                               rtol=0, atol=1e-9)
    vals = {(u, v): S[u, v] for u, v in zip(*np.nonzero(S))}
    assert _rows(t, "user", "neighbour") == _oracle_top(vals, S.shape[0], ch.config.k)


@pytest.mark.parametrize("name", ["itemcf", "swing", "swing_pop", "usercf", "hot", "fresh"])
def test_recall_answers_equal_in_process(fitted, world, name):
    spark, local, _ = fitted
    users = np.arange(-1, world.n_users)
    a, b = spark[name].recall(users, 15), local[name].recall(users, 15)
    assert (a.items >= 0).sum() > world.n_users  # answers are not empty
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_hot_and_fresh_tables(fitted, world):
    spark, local, work = fitted
    inter = world.interactions
    now = int(inter["timestamp"].max())
    # hot: against a direct sum over the interaction rows
    expect = np.zeros(world.n_items)
    for i, t in zip(inter["item_idx"].to_list(), inter["timestamp"].to_list()):
        expect[i] += math.exp(-(now - t) / (30.0 * 86400))
    np.testing.assert_allclose(spark["hot"].popularity_, expect, rtol=1e-12, atol=0)
    counts = np.bincount(inter["item_idx"].to_numpy(), minlength=world.n_items)
    np.testing.assert_array_equal(read_table(work / "hot", "popularity").sort("item")["events"].to_numpy(),
                                  counts[counts > 0])
    np.testing.assert_array_equal(spark["hot"].items_, local["hot"].items_)
    np.testing.assert_array_equal(spark["fresh"].items_, local["fresh"].items_)
    assert len(spark["fresh"].items_) >= 10


def test_cli_engine_without_java_is_one_line_exit_2(tmp_path):
    """`funnelrec fit --engine spark` where no Java can be found: exit 2, one line naming it."""
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # the venv's bin: python, no java
    exe = str(Path(sys.executable).parent / "funnelrec")
    p = subprocess.run([exe, "fit", "--engine", "spark", "--spark-master", "local[2]", "--dataset", "synthetic",
                        "--out", str(tmp_path / "f")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Java" in lines[0] and lines[0].startswith("error:")


def test_funnel_of_spark_tables_saves_and_serves_like_in_process(fitted, world, tmp_path):
    """The channels fitted from Spark's tables go into an ordinary funnel artifact; loaded back,
    the funnel's recall stage answers as the in-process funnel's (items and scores), and so does
    its served top-k."""
    from funnelrec.pipeline.funnel import Funnel, FunnelStats

    spark, local, _ = fitted
    cfg = FunnelConfig.from_dict(yaml.safe_load(FUNNEL_YAML.replace("WORK", str(tmp_path / "unused"))))
    stats = FunnelStats.of(world)
    Funnel(cfg, world.dataset.catalogue(), spark, stats).save(tmp_path / "spark_funnel")
    loaded = Funnel.load(tmp_path / "spark_funnel")
    users = np.arange(world.n_users)
    got = loaded.recall(users)
    in_process = Funnel(cfg, world.dataset.catalogue(), local, stats)
    want = in_process.recall(users)
    assert [b.channel for b in got] == [b.channel for b in want] == list(local)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)  # -inf at the same PAD slots
    served, _ = loaded.recommend_batch(users, 10)
    np.testing.assert_array_equal(served, in_process.recommend_batch(users, 10)[0])
    assert (served[:, 0] >= 0).all()
