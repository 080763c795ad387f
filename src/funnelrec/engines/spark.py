"""The Apache Spark engine: the offline table jobs of itemCF, userCF, Swing, hot and fresh as
Spark DataFrame jobs, from Parquet to Parquet (engines/tables.py lists the tables).

Each job computes what the in-process kernel computes, not an approximation of it:

- Caps. `cap_rows` keeps a seeded uniform sample of each over-long row: numpy's PCG64 stream of
  `seed` gives the p-th entry of the matrix (CSR order: row, then column ascending) the key
  `random()[p]`, and a row keeps its `cap` smallest keys. Spark gives every pair its CSR position
  (per-row offsets + rank inside the row), range-partitions the positions, and each partition
  draws its own slice of the same stream (`PCG64(seed).advance(first)`: one 64-bit draw per
  double), so the sample is the in-process one on any number of executors.
- Sums. Floating-point addition is not associative and Spark's aggregation order is not fixed;
  the sums of the similarity terms run in decimal(38, 18) (exact addition of the terms rounded
  at 1e-18), so two items with the same contributions get bit-equal scores (the ties the
  kernels break by lower index stay ties) and a rerun gives the same table.
- Top-k. row_number over (similarity desc, neighbour asc): `select_topk`'s (−val, id) order.

Swing (recall/swing.py): for item i, the user pairs u < v of its capped user list, the overlap
I_u ∩ I_v of their capped item lists (array_intersect), kept when |I_u ∩ I_v| ≥ 2 with weight
w_u·w_v/(α + |I_u ∩ I_v|), scattered to every j ∈ I_u ∩ I_v \\ {i}. Pairs are deduplicated before
the intersection (a pair shared by many items is intersected once).

The JVM needs Java 17+ (Debian: openjdk-17-jre-headless) and `pyspark` (the dev extra).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from funnelrec.core.errors import ConfigError
from funnelrec.data.dataset import TrainData
from funnelrec.engines import EngineSpec, EngineUnavailableError
from funnelrec.engines.tables import load_channel, write_meta
from funnelrec.recall.base import RecallChannel
from funnelrec.recall.fresh import FreshRecall
from funnelrec.recall.hot import HotRecall
from funnelrec.recall.itemcf import ItemCFRecall
from funnelrec.recall.swing import SwingRecall
from funnelrec.recall.usercf import UserCFRecall

#: channel classes the Spark engine has a job for → their table kind (fresh: global mode only)
SPARK_KINDS = {ItemCFRecall: "itemcf", SwingRecall: "swing", UserCFRecall: "usercf", HotRecall: "hot",
               FreshRecall: "fresh"}

_SESSIONS: dict[tuple, Any] = {}


def spark_kind(channel: RecallChannel) -> str | None:
    """The job kind for `channel`, or None when it is fitted in-process."""
    kind = SPARK_KINDS.get(type(channel))
    if kind == "fresh" and channel.config.by_user_tags:
        return None
    return kind


def check_available() -> None:
    """EngineUnavailableError (one line) unless Java and pyspark are both here: called before a
    fit loads any data."""
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise EngineUnavailableError("engine spark: no Java found (java not on PATH, JAVA_HOME unset); "
                                     "install openjdk-17-jre-headless")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise EngineUnavailableError("engine spark: pyspark is not installed (pip install 'pyspark>=4', "
                                     "the dev extra)") from None


def spark_session(spec: EngineSpec):
    """A SparkSession for `spec` (one per master/settings in this process, stopped at exit).
    EngineUnavailableError when Java or pyspark is missing."""
    check_available()
    from pyspark.sql import SparkSession

    key = (spec.master, spec.shuffle_partitions, tuple(sorted((str(k), str(v)) for k, v in spec.conf.items())))
    s = _SESSIONS.get(key)
    if s is not None and s.sparkContext._jsc is not None:
        return s
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers need this venv's numpy/pandas
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    b = (SparkSession.builder.master(spec.master).appName("funnelrec")
         .config("spark.sql.shuffle.partitions", str(spec.shuffle_partitions))
         .config("spark.default.parallelism", str(spec.shuffle_partitions))
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.session.timeZone", "UTC"))
    for k, v in spec.conf.items():
        b = b.config(str(k), str(v))
    try:
        s = b.getOrCreate()
    except Exception as e:  # the JVM did not start (a broken Java, a bad master URL)
        raise EngineUnavailableError(f"engine spark: the Spark session did not start: {str(e).splitlines()[0]}") from None
    s.sparkContext.setLogLevel("ERROR")
    _SESSIONS[key] = s
    atexit.register(s.stop)
    return s


# ---------------------------------------------------------------------------------- building blocks
def _F():
    from pyspark.sql import functions as F

    return F


def _window():
    from pyspark.sql import Window

    return Window


def cap_sample(df, row: str, col: str, cap: int, seed: int, descending: bool = False):
    """`cap_rows` on a DataFrame of distinct (row, col) pairs: rows with more than `cap` entries
    keep the `cap` with the smallest keys of numpy's default_rng(seed).random(nnz), entry p in
    the matrix's storage order (row, then col ascending; `descending`: col descending, the
    order scipy's sparse product leaves userCF's weighted item → user matrix in). cap ≤ 0 or no
    row over the cap: df as it is (no draws)."""
    if cap <= 0:
        return df
    F, W = _F(), _window()
    lens = df.groupBy(row).agg(F.count("*").alias("_len"))
    if (lens.agg(F.max("_len")).first()[0] or 0) <= cap:
        return df
    # offsets of each row in CSR order: the small per-row table in one ordered window
    offs = lens.withColumn("_off", F.coalesce(F.sum("_len").over(
        W.orderBy(row).rowsBetween(W.unboundedPreceding, -1)), F.lit(0)))
    inner = F.desc(col) if descending else F.asc(col)
    ranked = df.withColumn("_r", F.row_number().over(W.partitionBy(row).orderBy(inner)) - 1)
    pos = ranked.join(offs.select(row, "_off", "_len"), row).withColumn("_pos", F.col("_off") + F.col("_r"))
    schema = pos.schema.add("_key", "double")

    def keys(batches):
        for pdf in batches:
            if not len(pdf):
                yield pdf.assign(_key=np.zeros(0))
                continue
            p = pdf["_pos"].to_numpy(np.int64)
            lo = int(p.min())
            bg = np.random.PCG64(seed)
            bg.advance(lo)
            draws = np.random.Generator(bg).random(int(p.max()) - lo + 1)
            yield pdf.assign(_key=draws[p - lo])

    n = max(int(df.sparkSession.conf.get("spark.sql.shuffle.partitions")), 1)
    keyed = pos.repartitionByRange(n, "_pos").sortWithinPartitions("_pos").mapInPandas(keys, schema)
    kept = keyed.withColumn("_k", F.row_number().over(W.partitionBy(row).orderBy("_key", "_pos")))
    return kept.filter(F.col("_k") <= cap).drop("_r", "_off", "_len", "_pos", "_key", "_k")


def exact_sum(col: str):
    """Σ col in decimal(38, 18): independent of the order Spark adds the terms in."""
    F = _F()
    return F.sum(F.col(col).cast("decimal(38,18)")).cast("double")


def top_k(df, key: str, other: str, k: int):
    """The k best `other` of each `key` by (similarity desc, other asc), similarity > 0, ranked 1…k."""
    F, W = _F(), _window()
    w = W.partitionBy(key).orderBy(F.desc("similarity"), F.asc(other))
    return (df.filter(F.col("similarity") > 0).withColumn("rank", F.row_number().over(w))
            .filter(F.col("rank") <= k))


# ---------------------------------------------------------------------------------- the jobs
def itemcf_job(pairs, k: int, similarity: str = "cosine", user_damping: str = "none", shrink: float = 0.0,
               asymmetry: float = 0.5, max_items_per_user: int = 0, seed: int = 0):
    """itemcf_neighbours(cap_rows(R, max_items_per_user, seed), …) on the distinct (user, item)
    `pairs`: columns item, neighbour, rank, similarity, support (= |U_i ∩ U_j| on the capped R)."""
    F = _F()
    R = cap_sample(pairs, "user", "item", max_items_per_user, seed).cache()
    lens = R.groupBy("user").agg(F.count("*").cast("double").alias("_n"))
    n = F.greatest(F.col("_n"), F.lit(1.0))
    w = {"none": F.lit(1.0), "iuf": 1.0 / F.log1p(n), "inverse": 1.0 / n}[user_damping]
    users = lens.select("user", w.alias("w"))
    deg = R.groupBy("item").agg(F.count("*").alias("deg"))
    a = asymmetry if similarity == "asymmetric" else 0.5
    co = (R.join(users, "user").alias("x").join(R.alias("y"), "user")
          .filter(F.col("x.item") != F.col("y.item"))
          .select(F.col("x.item").alias("item"), F.col("y.item").alias("neighbour"), "w")
          .groupBy("item", "neighbour").agg(exact_sum("w").alias("c"), F.count("*").alias("support")))
    di = deg.select(F.col("item"), F.col("deg").alias("ni"))
    dj = deg.select(F.col("item").alias("neighbour"), F.col("deg").alias("nj"))
    co = co.join(di, "item").join(dj, "neighbour")
    if similarity == "jaccard":
        den = (F.col("ni") + F.col("nj") - F.col("support")).cast("double") + F.lit(float(shrink))
    else:
        den = (F.pow(F.col("ni").cast("double"), F.lit(float(a))) * F.pow(F.col("nj").cast("double"), F.lit(1.0 - a))
               + F.lit(float(shrink)))
    sims = co.select("item", "neighbour", (F.col("c") / den).alias("similarity"), "support")
    return top_k(sims, "item", "neighbour", k).select("item", "neighbour", "rank", "similarity", "support")


def swing_job(pairs, k: int, alpha: float = 1.0, user_weight_power: float = 0.5, max_users_per_item: int = 0,
              max_items_per_user: int = 0, seed: int = 0, popularity_power: float = 0.0):
    """swing_neighbours(R, …) on the distinct (user, item) `pairs`: columns item, neighbour, rank,
    similarity, support (= the user pairs of i's capped list that share j and ≥ 2 items)."""
    F = _F()
    norm = pairs.groupBy("item").agg(
        F.pow(F.greatest(F.count("*").cast("double"), F.lit(1.0)), F.lit(float(popularity_power))).alias("norm"))
    R = cap_sample(pairs, "user", "item", max_items_per_user, seed).cache()
    U = cap_sample(R.select("item", "user"), "item", "user", max_users_per_item, seed + 1)
    hist = R.groupBy("user").agg(F.array_sort(F.collect_list("item")).alias("items"),
                                 F.pow(F.greatest(F.count("*").cast("double"), F.lit(1.0)),
                                       F.lit(-float(user_weight_power))).alias("w"))
    trip = (U.alias("a").join(U.alias("b"), "item").filter(F.col("a.user") < F.col("b.user"))
            .select("item", F.col("a.user").alias("u"), F.col("b.user").alias("v"))).cache()
    hu = hist.select(F.col("user").alias("u"), F.col("items").alias("iu"), F.col("w").alias("wu"))
    hv = hist.select(F.col("user").alias("v"), F.col("items").alias("iv"), F.col("w").alias("wv"))
    uv = (trip.select("u", "v").distinct().join(hu, "u").join(hv, "v")
          .select("u", "v", "wu", "wv", F.array_intersect("iu", "iv").alias("common"))
          .filter(F.size("common") >= 2)
          .select("u", "v", "common",
                  (F.col("wu") * F.col("wv") / (F.lit(float(alpha)) + F.size("common").cast("double"))).alias("w")))
    contrib = (trip.join(uv, ["u", "v"]).select("item", F.explode("common").alias("neighbour"), "w")
               .filter(F.col("neighbour") != F.col("item")))
    acc = contrib.groupBy("item", "neighbour").agg(exact_sum("w").alias("s"), F.count("*").alias("support"))
    ni = norm.select("item", F.col("norm").alias("n_i"))
    nj = norm.select(F.col("item").alias("neighbour"), F.col("norm").alias("n_j"))
    sims = acc.join(ni, "item").join(nj, "neighbour").select(
        "item", "neighbour", (F.col("s") / (F.col("n_i") * F.col("n_j"))).alias("similarity"), "support")
    out = top_k(sims, "item", "neighbour", k).select("item", "neighbour", "rank", "similarity", "support")
    return out, [R, trip]


def usercf_jobs(pairs, k: int, hot_damping: bool = True, max_users_per_item: int = 0, seed: int = 0):
    """UserCF's tables on the distinct (user, item) `pairs`: item_weight (item, n_users, weight),
    item_users (the capped, weighted item → user sample), user_neighbours (user, neighbour, rank,
    similarity) with sim(u, v) = Σ_{i ∈ I_u, v ∈ capped U_i} w_i / sqrt(|I_u|·|I_v|), v ≠ u."""
    F = _F()
    pop = pairs.groupBy("item").agg(F.count("*").alias("n_users"))
    w = (1.0 / F.log1p(F.greatest(F.col("n_users").cast("double"), F.lit(1.0)))) if hot_damping else F.lit(1.0)
    item_weight = pop.select("item", "n_users", w.cast("float").alias("weight"))
    # in-process the sample is drawn on diag(w)·(I, U), whose rows scipy's product stores with
    # the users in descending order: the keys follow that order
    sample = cap_sample(pairs.select("item", "user"), "item", "user", max_users_per_item, seed, descending=True)
    item_users = sample.join(item_weight.select("item", "weight"), "item").select("item", "user", "weight")
    lens = pairs.groupBy("user").agg(F.greatest(F.count("*").cast("double"), F.lit(1.0)).alias("len"))
    co = (pairs.alias("h").join(item_users.alias("s"), "item").filter(F.col("h.user") != F.col("s.user"))
          .select(F.col("h.user").alias("user"), F.col("s.user").alias("neighbour"),
                  F.col("weight").cast("double").alias("w"))
          .groupBy("user", "neighbour").agg(exact_sum("w").alias("acc")))
    lu = lens.select("user", F.col("len").alias("len_u"))
    lv = lens.select(F.col("user").alias("neighbour"), F.col("len").alias("len_v"))
    scored = co.join(lv, "neighbour").select("user", "neighbour",
                                             (F.col("acc") * (1.0 / F.sqrt("len_v"))).alias("similarity"))
    top = top_k(scored, "user", "neighbour", k).join(lu, "user").select(
        "user", "neighbour", "rank", (F.col("similarity") / F.sqrt("len_u")).alias("similarity"))
    return {"item_weight": item_weight, "item_users": item_users, "user_neighbours": top}


def hot_job(events, now: int, tau_days: float):
    """(item, events, popularity = Σ exp(−(now − t)/τ)) over the interaction rows (τ = 0: counts)."""
    F = _F()
    if tau_days <= 0:
        w = F.lit(1.0)
    else:
        w = F.exp(-(F.lit(int(now)) - F.col("timestamp")).cast("double") / F.lit(tau_days * 86400.0))
    return events.select("item", w.alias("w")).groupBy("item").agg(
        F.count("*").alias("events"), exact_sum("w").alias("popularity"))


def fresh_job(items, now: int, max_items: int):
    """The fresh channel's global list (rank, item): items with a publish time, newest first
    (ties → lower index), the `max_items` newest published by `now` plus every later one."""
    F, W = _F(), _window()
    known = items.filter(F.col("publish").isNotNull() & ~F.isnan("publish"))
    o = W.orderBy(F.desc("publish"), F.asc("item"))
    past = (F.col("publish") <= F.lit(float(now))).cast("long")
    ranked = known.withColumn("_past", past).withColumn(
        "_cum", F.sum("_past").over(o.rowsBetween(W.unboundedPreceding, W.currentRow)))
    kept = ranked.filter((F.col("_past") == 0) | (F.col("_cum") <= max_items))
    return kept.withColumn("rank", F.row_number().over(o)).select("rank", "item")


# ---------------------------------------------------------------------------------- the engine
class SparkEngine:
    """Runs the table jobs of a funnel's channels on Spark and loads the channels from them.

        with SparkEngine(EngineSpec("spark", master="local[2]")) as eng:
            channels = eng.fit_channels({"swing": SwingRecall(cfg)}, data)
    """

    def __init__(self, spec: EngineSpec | None = None, session: Any = None) -> None:
        self.spec = spec or EngineSpec("spark")
        self._session = session
        self._tmp: str | None = None

    @property
    def session(self):
        if self._session is None:
            self._session = spark_session(self.spec)
        return self._session

    def __enter__(self) -> SparkEngine:
        self.session  # noqa: B018  (fail early: no Java / pyspark)
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def work_dir(self) -> Path:
        if self.spec.work_dir:
            Path(self.spec.work_dir).mkdir(parents=True, exist_ok=True)
            return Path(self.spec.work_dir)
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="funnelrec-spark-")
        return Path(self._tmp)

    # -------------------------------------------------------------- inputs
    def write_inputs(self, data: TrainData, folder: Path, time_columns: tuple[str, ...] = ()) -> None:
        """interactions.parquet (user, item, timestamp: the training rows) and, for the fresh
        channels, items_<column>.parquet (item, publish) per publish-time column."""
        folder.mkdir(parents=True, exist_ok=True)
        inter = data.interactions
        cols = [pl.col("user_idx").cast(pl.Int64).alias("user"), pl.col("item_idx").cast(pl.Int64).alias("item")]
        if "timestamp" in inter.columns:
            cols.append(pl.col("timestamp").cast(pl.Int64))
        inter.select(cols).write_parquet(folder / "interactions.parquet")
        items = data.dataset.items
        for col in time_columns:
            if col not in items.columns:
                raise ConfigError(f"fresh: item column {col!r} not found; available: {', '.join(items.columns)}")
            pub = items[col].cast(float).fill_null(float("nan")).to_numpy()
            pl.DataFrame({"item": np.arange(len(pub), dtype=np.int64), "publish": pub.astype(np.float64)}
                         ).write_parquet(folder / f"items_{col}.parquet")

    def events(self, folder: Path):
        return self.session.read.parquet(str(folder / "interactions.parquet"))

    def pairs(self, folder: Path):
        return self.events(folder).select("user", "item").distinct()

    # -------------------------------------------------------------- per channel
    def run_channel(self, channel: RecallChannel, data: TrainData, folder: Path) -> Path:
        """Write `channel`'s tables for `data` under `folder/<channel name>` (inputs in `folder`)."""
        kind = spark_kind(channel)
        if kind is None:
            raise EngineUnavailableError(f"engine spark: no job for channel {channel.name!r} "
                                         f"({type(channel).__name__}); it is fitted in-process")
        cfg = channel.config
        out = folder / channel.name
        if out.exists():
            shutil.rmtree(out)
        cache: list = []

        def save(df, name: str) -> None:
            df.write.mode("overwrite").parquet(str(out / f"{name}.parquet"))

        if kind == "itemcf":
            save(itemcf_job(self.pairs(folder), cfg.k, cfg.similarity, cfg.user_damping, cfg.shrink, cfg.asymmetry,
                            cfg.max_items_per_user, cfg.seed), "neighbours")
        elif kind == "swing":
            table, cache = swing_job(self.pairs(folder), cfg.k, cfg.alpha, cfg.user_weight_power,
                                     cfg.max_users_per_item, cfg.max_items_per_user, cfg.seed, cfg.popularity_power)
            save(table, "neighbours")
            if cfg.cosine_blend > 0:
                save(itemcf_job(self.pairs(folder), cfg.k), "cosine")
        elif kind == "usercf":
            for name, df in usercf_jobs(self.pairs(folder), channel.config.k, cfg.hot_damping,
                                        cfg.max_users_per_item, cfg.seed).items():
                save(df, name)
        elif kind == "hot":
            save(hot_job(self.events(folder), data.now, cfg.tau_days), "popularity")
        elif kind == "fresh":
            items = self.session.read.parquet(str(folder / f"items_{cfg.time_column}.parquet"))
            save(fresh_job(items, data.now, cfg.max_items), "fresh_list")
        for df in cache:
            df.unpersist()
        write_meta(out, {"kind": kind, "now": int(data.now), "n_users": data.n_users, "n_items": data.n_items,
                         "channel": channel.name, "config": repr(cfg), "engine": "spark",
                         "master": self.spec.master})
        return out

    def fit_channels(self, channels: dict[str, RecallChannel], data: TrainData,
                     seconds: dict[str, float] | None = None) -> dict[str, RecallChannel]:
        """Each channel fitted: from its Spark tables when the engine has a job for it, else
        in-process. `seconds[name]` gets each channel's wall time (job + load)."""
        folder = self.work_dir()
        time_cols = tuple(dict.fromkeys(c.config.time_column for c in channels.values() if spark_kind(c) == "fresh"))
        if any(spark_kind(c) for c in channels.values()):
            self.write_inputs(data, folder, time_cols)
        for name, ch in channels.items():
            t0 = time.perf_counter()
            if spark_kind(ch) is None:
                ch.fit(data)
            else:
                load_channel(ch, self.run_channel(ch, data, folder), data)
            if seconds is not None:
                seconds[name] = time.perf_counter() - t0
        return channels
