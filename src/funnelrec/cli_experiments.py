"""CLI commands for experiments: `funnelrec simulate` and `funnelrec experiments report`.

Registered on the main app by `register(app)` (see cli.py). Errors are FunnelrecError
subclasses; the main app prints them as one line and exits 2.

    funnelrec simulate --config configs/sim/ab_itemcf_vs_hot.yaml --days 7 --out runs/ab
    funnelrec experiments report --events runs/ab/user_days.parquet --config configs/sim/report.yaml --html r.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from funnelrec.core.errors import ConfigError, DataError

__all__ = ["experiments_app", "simulate", "report", "register", "load_report_config", "read_events"]

experiments_app = typer.Typer(no_args_is_help=True, help="Experiment analysis: reports.")


def read_events(path: Path):
    """A polars table from .parquet, .csv or .jsonl/.ndjson."""
    import polars as pl

    if not path.exists():
        raise DataError(f"events file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix == ".csv":
            return pl.read_csv(path)
        if suffix in (".jsonl", ".ndjson"):
            return pl.read_ndjson(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"cannot read events file {path}: {e}") from None
    raise DataError(f"events file {path}: unknown format {suffix!r}; use .parquet, .csv or .jsonl")


def load_report_config(path: Path) -> tuple[Any, dict[str, Any]]:
    """(ReportConfig, where) from a YAML of ReportConfig keys plus an optional `where` mapping
    column → value (or list of values) that selects the rows to analyse."""
    from funnelrec.core.config import from_dict, load_yaml
    from funnelrec.experiments.report import ReportConfig

    data = load_yaml(path)
    where = data.pop("where", None) or {}
    if not isinstance(where, dict):
        raise ConfigError(f"{path}: `where` must map column names to values, got {where!r}")
    return from_dict(ReportConfig, data, f"report config {path}"), where


def _select(df, where: dict[str, Any]):
    import polars as pl

    for col, value in where.items():
        if col not in df.columns:
            raise DataError(f"where: column {col!r} is not in the events table ({', '.join(df.columns)})")
        values = value if isinstance(value, list) else [value]
        df = df.filter(pl.col(col).is_in(values))
    if df.is_empty():
        raise DataError(f"no events match where={where}")
    return df


@experiments_app.command("report")
def report(events: Path = typer.Option(..., help="per-user (or per-user-day) metrics table: .parquet/.csv/.jsonl"),
           config: Path = typer.Option(..., help="report YAML (metrics, control, where …)"),
           html: Path | None = typer.Option(None, help="also write an HTML report with plots here")) -> None:
    """Print the experiment table (metric, variant, value, lift, CI, p, q, always-valid p, SRM)."""
    from funnelrec.experiments.report import build_report

    cfg, where = load_report_config(config)
    rep = build_report(_select(read_events(events), where), cfg)
    typer.echo(rep.to_text())
    if html is not None:
        typer.echo(f"\nwrote {rep.to_html(html)}")


def simulate(config: Path = typer.Option(..., help="simulation YAML (configs/sim/*.yaml)"),
             days: int | None = typer.Option(None, help="days to simulate (default: the config's)"),
             out: Path | None = typer.Option(None, help="folder for report.html, impressions/user_days/events parquet"),
             seed: int | None = typer.Option(None, help="override the config's seed"),
             progress: bool = typer.Option(True, help="show a progress bar on stderr")) -> None:
    """Closed-loop A/B simulation of funnels over the synthetic world; prints the report."""
    from funnelrec.simulate import Simulator, load_sim_config

    cfg = load_sim_config(config)
    if seed is not None:
        cfg = cfg.replace(seed=seed)
    result = Simulator(cfg).run(days=days, progress=progress)
    typer.echo(result.report.to_text())
    s = result.seconds
    typer.echo(f"\n{result.impressions.height} impressions, {int(result.impressions['click'].sum())} clicks, "
               f"{len(result.funnels)} funnels · fit {s['fit']:.1f} s, serve {s['serve']:.1f} s, total {s['total']:.1f} s")
    if out is not None:
        paths = result.write(out)
        typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def register(app: typer.Typer) -> None:
    """Add `simulate` and the `experiments` group to the main CLI app."""
    app.command("simulate")(simulate)
    app.add_typer(experiments_app, name="experiments")
