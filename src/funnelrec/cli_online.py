"""The online loop's commands (issue #10): `funnelrec learn` (beside `serve`), `funnelrec replay`,
`funnelrec catalogue …`. Registered on the main app by cli.py; each command keeps the CLI rule:
a user-caused error prints one `error: …` line and exits 2."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the online commands to `app` (each command's module is imported only when it runs)."""
    _register_replay(app)
    _register_learn(app)
    _register_catalogue(app)
    _register_log(app)
    return None


def _register_catalogue(app: typer.Typer) -> None:
    """`funnelrec catalogue upsert|delete|hide --items FILE --url URL`: the live catalogue of a
    running server, over its HTTP API (POST /items, DELETE /items/{id}, POST /items/{id}/hide)."""
    catalogue = typer.Typer(help="Change a running server's live catalogue (items: upsert, delete, hide).")
    app.add_typer(catalogue, name="catalogue")
    items_opt = typer.Option(..., "--items", help="CSV or Parquet file: item_id, optional expires_at (unix s), "
                                                 "the rest item-table columns")
    url_opt = typer.Option("http://127.0.0.1:8000", "--url", help="the server's base URL")
    token_opt = typer.Option(None, "--token", envvar="FUNNELREC_ADMIN_TOKEN", help="X-Admin-Token, when the "
                                                                                "server has one")
    multi_opt = typer.Option("", "--multi", help="CSV columns holding several values split by --sep, e.g. genres")

    @catalogue.command("upsert")
    def upsert_cmd(items: Path = items_opt, url: str = url_opt, token: str | None = token_opt,
                   multi: str = multi_opt, sep: str = typer.Option("|", "--sep")) -> None:
        """Upsert every row of the file (new items are recommendable on the next request)."""
        rows = _catalogue_rows(items, [c for c in multi.split(",") if c], sep)
        out = _catalogue_call(url, token, "POST", "/items", {"items": rows})
        typer.echo(f"upserted {out.get('upserted')} items; catalogue version {out.get('catalogue_version')}")

    @catalogue.command("delete")
    def delete_cmd(items: Path = items_opt, url: str = url_opt, token: str | None = token_opt) -> None:
        """Delete the file's item_ids: they are never recommended again."""
        out: dict = {}
        ids = [r["item_id"] for r in _catalogue_rows(items, [], "|")]
        for i in ids:
            out = _catalogue_call(url, token, "DELETE", f"/items/{_quote(i)}", None)
        typer.echo(f"deleted {len(ids)} items; catalogue version {out.get('catalogue_version')}")

    @catalogue.command("hide")
    def hide_cmd(items: Path = items_opt, url: str = url_opt, token: str | None = token_opt,
                 unhide: bool = typer.Option(False, "--unhide", help="show the items again")) -> None:
        """Hide (or --unhide) the file's item_ids."""
        out: dict = {}
        ids = [r["item_id"] for r in _catalogue_rows(items, [], "|")]
        for i in ids:
            out = _catalogue_call(url, token, "POST", f"/items/{_quote(i)}/{'unhide' if unhide else 'hide'}", None)
        typer.echo(f"{'unhid' if unhide else 'hid'} {len(ids)} items; catalogue version {out.get('catalogue_version')}")


def _register_log(app: typer.Typer) -> None:
    """`funnelrec log stats|trim --state-dir DIR`: the server's event log (pipeline/eventlog.py)."""
    log = typer.Typer(no_args_is_help=True, help="The server's event log (state_dir/events.db): size, trimming.")
    app.add_typer(log, name="log")
    state_opt = typer.Option(Path("state"), "--state-dir", help="the server's state dir (events.db)")

    def _open(state_dir: Path, keep_s: int | None = None):
        from funnelrec.core.errors import ConfigError
        from funnelrec.pipeline.eventlog import EventLog

        path = state_dir / "events.db"
        if not path.is_file():
            raise ConfigError(f"event log {path} not found (the server's --state-dir holds events.db)")
        return EventLog(path, retention_s=keep_s)

    @log.command("stats")
    def stats_cmd(state_dir: Path = state_opt, as_json: bool = typer.Option(False, "--json")) -> None:
        """Rows, seq and time range, how far a retention trimmed, bytes on disk."""
        with _sqlite_errors_named(state_dir / "events.db"), _open(state_dir) as ev:
            st = ev.stats()
        if as_json:
            typer.echo(json.dumps(st))
            return
        typer.echo("\n".join(f"{k:>18}: {v}" for k, v in st.items()))

    @log.command("trim")
    def trim_cmd(keep_s: int = typer.Option(..., "--keep-s", help="keep the events of the last this many seconds "
                                                                 "(of the server's clock when it stored them)"),
                 state_dir: Path = state_opt,
                 vacuum: bool = typer.Option(False, "--vacuum", help="then give the freed space back to the disk "
                                                                    "(rewrites the file and holds its write lock "
                                                                    "meanwhile: run it with the server stopped)")) -> None:
        """Delete the events older than --keep-s now, as `serve --log-retention-s` does as it goes:
        for a log that grew without one. A learner behind the cut is told what it lost."""
        from funnelrec.core.errors import ConfigError

        if keep_s <= 0:
            raise ConfigError(f"--keep-s must be > 0 seconds, got {keep_s}")
        with _sqlite_errors_named(state_dir / "events.db"), _open(state_dir, keep_s) as ev:
            before = ev.stats()
            deleted = 0
            while n := ev.trim():
                deleted += n
            whole = ev.vacuum() if vacuum else True
            after = ev.stats()
        typer.echo(f"deleted {deleted:,} events (up to seq {after['trimmed_up_to']}); {after['rows']:,} left; "
                   f"{before['bytes'] / 2**20:.1f} → {after['bytes'] / 2**20:.1f} MB"
                   + ("" if whole else " (a reader kept part of the WAL: its space returns at a later checkpoint)"))


@contextlib.contextmanager
def _sqlite_errors_named(path: Path):
    """A busy or broken event log as one line (exit 2), not a traceback."""
    import sqlite3

    from funnelrec.core.errors import ArtifactError

    try:
        yield
    except sqlite3.Error as e:
        raise ArtifactError(f"event log {path}: {e} (a server or learner holding it? retry, or stop it)") from None


def _quote(item_id: object) -> str:
    from urllib.parse import quote

    return quote(str(item_id), safe="")


def _catalogue_rows(path: Path, multi: list[str], sep: str) -> list[dict]:
    """{item_id, attributes, expires_at?} per row of a CSV / Parquet file (DataError naming the file)."""
    import math

    import polars as pl

    from funnelrec.core.errors import DataError

    try:
        df = pl.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pl.read_csv(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise DataError(f"--items {path}: cannot read it as {'Parquet' if path.suffix == '.parquet' else 'CSV'}: "
                        f"{str(e).splitlines()[0][:160]}") from None
    if "item_id" not in df.columns:
        raise DataError(f"--items {path}: no item_id column (it has {', '.join(df.columns)})")
    missing = [c for c in multi if c not in df.columns]
    if missing:
        raise DataError(f"--items {path}: --multi names columns {missing} it does not have")
    rows = []
    for r in df.to_dicts():
        attrs = {c: (v.split(sep) if c in multi and isinstance(v, str) else v)
                 for c, v in r.items() if c not in ("item_id", "expires_at") and v is not None}
        row = {"item_id": r["item_id"], "attributes": attrs}
        exp = r.get("expires_at")
        if exp is not None and not (isinstance(exp, float) and math.isnan(exp)):
            row["expires_at"] = exp
        rows.append(row)
    return rows


def _catalogue_call(url: str, token: str | None, method: str, route: str, body: dict | None) -> dict:
    """One HTTP call; a refused one (4xx/5xx, unreachable server) is a FunnelrecError with its detail."""
    import httpx

    from funnelrec.core.errors import FunnelrecError

    headers = {"X-Admin-Token": token} if token else {}
    try:
        r = httpx.request(method, url.rstrip("/") + route, json=body, headers=headers, timeout=60.0)
    except httpx.HTTPError as e:
        raise FunnelrecError(f"--url {url}: {type(e).__name__}: {e}") from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:200]
        raise FunnelrecError(f"{method} {route}: HTTP {r.status_code}: {detail}")
    return r.json()


def _default_funnel():
    """The funnel `funnelrec train` fits by default on MovieLens (configs/funnel/ml100k.yaml,
    shipped inside the package: generic channels and an LR ranker), else FunnelConfig()'s
    defaults. Read here, not imported from cli.py, which imports this module."""
    from funnelrec.pipeline.config import FunnelConfig

    path = Path(__file__).resolve().parent / "configs" / "funnel" / "ml100k.yaml"
    return FunnelConfig.load(path) if path.exists() else FunnelConfig()


def _register_replay(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_cmd(dataset: str | None = typer.Option(None, help="dataset name [default: the config's data: "
                                                                  "files, else movielens-100k]"),
                   path: Path | None = typer.Option(None, help="local folder with the dataset files"),
                   mode: str = typer.Option("all", help="static | realtime | online | all"),
                   days: int | None = typer.Option(None, help="replay at most this many days after the cut"),
                   config: Path | None = typer.Option(None, help="replay YAML (replay:, funnel:, dataset: sections), "
                                                                "or a funnel config such as init's funnel.yaml"),
                   server: str | None = typer.Option(None, help="drive a running server at this URL instead "
                                                                "(static / realtime); it must serve the funnel "
                                                                "fitted on the same cut (--save)"),
                   save: Path | None = typer.Option(None, help="also save the funnel fitted before the cut here "
                                                               "(for `funnelrec serve --artifact`)"),
                   as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
        """Replay the dataset's later half day by day through the service (fitted on the first half):
        NDCG@k and AUC per mode, and each mode − static with its bootstrap CI."""
        import dataclasses
        import json

        import polars as pl

        from funnelrec.core.errors import ConfigError
        from funnelrec.data import load_dataset
        from funnelrec.online.replay import (
            MODES,
            HttpReplayClient,
            ReplayPending,
            fit_for_replay,
            load_replay_file,
            replay,
            replay_likes,
            summarize,
        )

        modes = list(MODES) if mode == "all" else [mode]
        if any(m not in MODES for m in modes):
            raise ConfigError(f"--mode must be one of {', '.join(MODES)} or all, got {mode!r}")
        if config is not None and not Path(config).is_file():
            raise ConfigError(f"{config}: config file not found")
        cfg, funnel_cfg, ds_kwargs = load_replay_file(config)
        if days is not None:
            cfg = dataclasses.replace(cfg, days=days)  # validated by ReplayConfig
        funnel_cfg = funnel_cfg or _default_funnel()
        if dataset is None and path is None and not ds_kwargs and funnel_cfg.data.given:
            from funnelrec.cli_data import load_data
            from funnelrec.online.replay import replay_funnel_path

            ds = load_data(funnel_cfg, replay_funnel_path(config), None, None)  # a team's own files
            dataset = ds.name
        else:
            dataset = dataset or "movielens-100k"
            ds = load_dataset(dataset, **({"path": path} if path is not None else {}), **ds_kwargs)
            ds.interactions = funnel_cfg.labels.fitted_rows(ds.interactions)  # as load_data does
        cfg = replay_likes(cfg, funnel_cfg, ds.interactions)
        fitted = fit_for_replay(ds, funnel_cfg, cfg, progress=not as_json)
        if save is not None:
            fitted.funnel.save(save)
        records, pending = [], {}
        for m in modes:
            client = HttpReplayClient(server) if server else None
            try:
                records.append(replay(fitted, m, cfg, client=client, progress=not as_json))
            except ReplayPending as e:
                if len(modes) == 1:
                    raise
                pending[m] = str(e)
            finally:
                if client is not None:
                    client.close()
        summary = summarize(pl.concat(records), cfg) if records else {"modes": {}, "differences": {}}
        summary.update({"dataset": dataset, "cut_time": fitted.cut_time, "fit_seconds": round(fitted.fit_seconds, 1),
                        "pending": pending})
        if as_json:
            typer.echo(json.dumps(summary))
            return
        k = cfg.k
        typer.echo(f"\nreplay · {dataset} · fit on {fitted.fit_rows.height} rows before {fitted.cut_time}, "
                   f"{fitted.replay_rows['day'].n_unique()} days replayed")
        typer.echo(f"{'mode':<10}{'NDCG@' + str(k):>10}{'AUC':>10}{'user-days':>11}")
        for m, v in summary["modes"].items():
            auc = "" if v["auc"] is None else f"{v['auc']:.4f}"
            typer.echo(f"{m:<10}{v[f'ndcg@{k}']:>10.4f}{auc:>10}{v['user_days']:>11}")
        for name, d in summary["differences"].items():
            for metric, r in d.items():
                lo, hi = r[f"ci{round(cfg.confidence * 100)}"]
                typer.echo(f"{name} {metric}: {r['mean']:+.4f}  {round(cfg.confidence * 100)} % CI [{lo:+.4f}, "
                           f"{hi:+.4f}] over {r['user_days']} user-days")
        for m, why in pending.items():
            typer.echo(f"{m}: pending — {why}")


def _register_learn(app: typer.Typer) -> None:
    """`funnelrec learn --served DIR [--state-dir DIR | --redis URL]`: the online learner
    (online/learner.py) beside `serve --watch DIR`."""

    @app.command("learn")
    def learn_cmd(served: Path = typer.Option(..., "--served", help="the served directory (versions/, CURRENT)"),
                  state_dir: Path | None = typer.Option(None, "--state-dir", help="the server's state dir (events.db)"),
                  redis: str | None = typer.Option(None, "--redis", help="redis://… : tail the Redis Stream instead"),
                  stream: str = typer.Option("funnelrec:events", "--stream", help="the Redis Stream key"),
                  prefix: str = typer.Option("funnelrec:", "--redis-prefix", help="the server's Redis key prefix"),
                  artifact: Path | None = typer.Option(None, "--artifact", help="first version, when DIR has none"),
                  interval: float = typer.Option(60.0, "--interval", help="seconds between steps when caught up"),
                  label_window: int = typer.Option(1800, "--label-window", help="label window (s, event time)"),
                  batch: int = typer.Option(100_000, "--batch", help="events per step"),
                  models: bool = typer.Option(True, "--models/--counts-only",
                                              help="update the fine ranker too (FTRL + optimizer steps, FID "
                                                   "admission), behind the AUC guardrail; or only the counts"),
                  guardrail_margin: float = typer.Option(0.01, "--guardrail-margin",
                                                         help="refuse a ranker whose held-out AUC is lower by more"),
                  min_count: int = typer.Option(5, "--min-count", help="events before a new id gets its own row"),
                  once: bool = typer.Option(False, "--once", help="one step, print its report, exit"),
                  until_caught_up: bool = typer.Option(False, "--until-caught-up",
                                                       help="steps until no event is left, then exit")) -> None:
        """Tail the event log (or Redis Stream), join labels, update counts and models, publish versions."""
        import json
        import logging

        from funnelrec.core.errors import ConfigError
        from funnelrec.online.learner import LearnConfig, OnlineLearner
        from funnelrec.online.publish import Publisher
        from funnelrec.online.source import EventLogSource, RedisStreamSource

        if (state_dir is None) == (redis is None):
            raise ConfigError("learn: give exactly one of --state-dir DIR (the event log) or --redis URL (the stream)")
        if artifact is not None:
            Publisher(served).init(artifact)
        source = RedisStreamSource(redis, stream) if redis else EventLogSource(state_dir / "events.db")  # type: ignore[operator]
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from funnelrec.online.catalogue import open_catalogue

        # the server's live catalogue (same backend): events on items upserted through the API are
        # learned (the item joins the published funnel) instead of quarantined as unknown
        catalogue = (open_catalogue("redis", redis_url=redis, prefix=prefix) if redis
                     else open_catalogue("sqlite", state_dir=state_dir)
                     if (state_dir / "catalogue.db").exists() else None)  # type: ignore[operator]
        updaters = []
        if models:
            from funnelrec.online.guardrail import AUCGuardrail
            from funnelrec.online.updates import RankerUpdater

            updaters.append(RankerUpdater(guardrail=AUCGuardrail(guardrail_margin)))
        learner = OnlineLearner(served, source, LearnConfig(interval_s=interval, label_window_s=label_window,
                                                             batch_limit=batch, min_count=min_count,
                                                             guardrail_margin=guardrail_margin),
                                catalogue=catalogue, updaters=updaters)
        try:
            if once:
                typer.echo(json.dumps(learner.run_once(), default=str))
            elif until_caught_up:
                while True:
                    r = learner.run_once()
                    if r["events"] == 0:
                        break
                typer.echo(json.dumps({"offset": learner.offset, "version": learner.version,
                                       "events_seen": learner.events_seen}))
            else:
                learner.run_forever()
        finally:
            learner.close()
