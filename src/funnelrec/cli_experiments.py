"""CLI commands for experiments: `funnelrec simulate` and `funnelrec experiments report`.

Registered on the main app by `register(app)` (see cli.py). Errors are FunnelrecError
subclasses; the main app prints them as one line and exits 2.

    funnelrec simulate --config configs/sim/ab_itemcf_vs_hot.yaml --days 7 --out runs/ab
    funnelrec experiments report --events runs/ab/user_days.parquet --config configs/sim/report.yaml --html r.html
    funnelrec experiments status --config configs/experiments.yaml --log state/events.db
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from funnelrec.core.errors import ConfigError, DataError

__all__ = ["experiments_app", "simulate", "report", "status", "register", "load_report_config", "read_events"]

experiments_app = typer.Typer(no_args_is_help=True, help="Experiment analysis: reports, ramp status.")


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


@experiments_app.command("status")
def status(config: Path = typer.Option(..., help="experiments YAML"),
           log: Path | None = typer.Option(None, help="the service's feedback log (events.db) for the guardrails"),
           now: str | None = typer.Option(None, help="ISO time to evaluate at (default: now)"),
           started: str | None = typer.Option(None, help="ISO time the ramp offsets count from, for ramps "
                                              "without ramp.start (default: --now: the service's start)")) -> None:
    """Each ramp's steps (done / current / pending, percent, time) and its guardrails' state.

    A scheduled ramp is replayed to `--now` as the service would: guardrails are looked at on
    the whole log at that time (a rollback the service made earlier shows again while the data
    still says worse)."""
    import time

    from funnelrec.experiments import ExperimentPlatform
    from funnelrec.experiments.schedule import format_time, parse_at

    def instant(text: str, what: str) -> float:
        try:
            kind, t = parse_at(text)
        except ValueError as e:
            raise ConfigError(f"{what}: {e}") from None
        if kind != "time":
            raise ConfigError(f"{what}: give an ISO time, got {text!r}")
        return t

    at = time.time() if now is None else instant(now, "--now")
    anchor = at if started is None else instant(started, "--started")
    if log is not None and not log.exists():
        raise DataError(f"feedback log not found: {log}")
    clock = [anchor]
    platform = ExperimentPlatform.from_yaml(config, clock=lambda: clock[0])
    clock[0] = at
    import polars as pl

    # the clock's step first (no data), then the guardrails' look at the whole log, as the
    # service's tick at that step would have done
    platform.tick(pl.DataFrame(schema={"user_id": pl.Utf8, "type": pl.Utf8, "value": pl.Float64,
                                       "experiments": pl.Utf8}))
    if log is not None:
        platform.tick(log, force=True)
    if not platform.ramps:
        typer.echo("no experiment has a ramp")
    for name, r in platform.ramps.items():
        e = platform.experiment(name)
        kind = "by the clock" if r.config.scheduled else "manual"
        typer.echo(f"{name} (layer {e.layer}, ramp {kind}): {r.status}, {r.traffic:.4g} of the layer now "
                   f"({r.traffic * 100:g}%) at {format_time(at)}")
        for st in r.steps():
            when = "-" if st["at"] is None else format_time(st["at"])
            typer.echo(f"  step {st['step']}  {when:20}  {st['percent']:g}%  {st['state']}")
        for g in r.config.guardrails:
            looks = [lk for lk in r.looks if lk.metric == g.metric]
            if r.config.scheduled:  # the always-valid look's defaults (experiments/schedule.py)
                rule = f"{g.direction}, max_degradation {g.max_degradation or 0:g}, alpha {g.alpha or 0.05:g}"
            else:
                rule = f"{g.direction}, max_degradation {g.max_degradation}, alpha {g.alpha}"
            if not r.config.scheduled:
                typer.echo(f"  guardrail {g.metric} ({rule}): checked by whoever calls advance()")
            elif log is None:
                typer.echo(f"  guardrail {g.metric}: not checked (no --log; the steps are the clock's) ({rule})")
                continue
            elif not looks:
                typer.echo(f"  guardrail {g.metric} ({rule}): no look yet")
            for lk in looks:
                typer.echo(f"  guardrail {lk.line()}")
        for reason in r.failed:
            typer.echo(f"  breach: {reason}")


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
