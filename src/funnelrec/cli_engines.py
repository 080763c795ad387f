"""`funnelrec fit`: train the funnel with its channel tables computed on an offline engine.

    funnelrec fit --engine spark --spark-master local[2] --dataset synthetic --out artifacts/funnel

The same fit as `funnelrec train`, with the config's `engine:` section overridden from the
command line (engines/: the in-process engine stays the default). The saved funnel is an
ordinary artifact: `funnelrec serve` cannot tell which engine computed its tables.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer


def fit_cmd(engine: str = typer.Option("spark", help="inprocess, or spark (Java 17 + pyspark)"),
            spark_master: str | None = typer.Option(None, "--spark-master", help="Spark master URL (local[2], "
                                                    "spark://host:7077, yarn); default: the config's, else local[2]"),
            spark_partitions: int | None = typer.Option(None, "--spark-partitions", help="spark.sql.shuffle.partitions"),
            work_dir: Path | None = typer.Option(None, "--work-dir", help="keep the engine's Parquet tables here"),
            dataset: str | None = typer.Option(None, help="dataset name (default: the config's data: files, "
                                                         "else movielens-100k)"),
            path: Path | None = typer.Option(None),
            config: Path | None = typer.Option(None, help="funnel YAML config (default: configs/funnel/ml100k.yaml "
                                                         "on MovieLens)"),
            out: Path | None = typer.Option(None, help="where to write the trained funnel (default: artifact/ beside "
                                                      "a config with data:, else artifacts/funnel)"),
            seed: int = typer.Option(2020)) -> None:
    """Train the funnel (channels + ranker) with the channel tables computed on --engine."""
    if engine == "spark":
        from funnelrec.engines.spark import check_available

        check_available()  # no Java / pyspark: one line, exit 2, before the config and the data load
    from funnelrec.cli_data import default_artifact, fit_checked, load_data, resolve_config
    from funnelrec.engines import EngineSpec

    cfg = resolve_config(config, dataset)  # the funnel `funnelrec train` would fit, on the same data
    spec = cfg.engine
    over = {"name": engine}
    if spark_master is not None:
        over["master"] = spark_master
    if spark_partitions is not None:
        over["shuffle_partitions"] = spark_partitions
    if work_dir is not None:
        over["work_dir"] = str(work_dir)
    spec = EngineSpec(**{**dataclasses.asdict(spec), **over})
    cfg = dataclasses.replace(cfg, engine=spec)
    d = load_data(cfg, config, dataset, path)
    funnel = fit_checked(cfg, d, seed, progress=True, where=config)[0]
    out = Path(out) if out is not None else default_artifact(config, cfg)
    funnel.save(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in (funnel.fit_seconds_ or {}).items())
    typer.echo(f"saved {out}/ ({size / 1e6:.1f} MB, {len(funnel.components())} components; engine {spec.name}; {secs})")


def register(app: typer.Typer) -> None:
    app.command("fit")(fit_cmd)
