"""From a team's own logs to a served funnel (issue #13): `funnelrec init`, `funnelrec recommend`,
and the data side of `funnelrec train --config` / `funnelrec serve --config`.

    funnelrec init --interactions events.parquet --items items.csv --out myfunnel
    funnelrec train --config myfunnel/funnel.yaml          # → myfunnel/artifact/
    funnelrec serve --config myfunnel/funnel.yaml          # fits first when there is no artifact yet
    funnelrec recommend --config myfunnel/funnel.yaml --users users.csv --k 50 --out recs.parquet

Every user-caused error is one `error: …` line naming the file, column or config key, exit 2
(FunnelrecError, mapped by cli.py:main). `--quiet` drops progress bars and chatter; `--json`
prints one JSON object on stdout and nothing else there (progress bars go to stderr).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from funnelrec.core.errors import ConfigError, DataError

#: the artifact `train --config` writes and `serve --config` serves: beside the config
ARTIFACT_DIR = "artifact"
#: where `train` writes without a config naming its data (and `serve` reads)
DEFAULT_ARTIFACT = Path("artifacts/funnel")
#: the tuned default funnel of MovieLens-100k, shipped inside the package (src/funnelrec/configs;
#: the repo root's configs/ is a link to it): it resolves after a plain pip install too
DEFAULT_FUNNEL = Path(__file__).resolve().parent / "configs" / "funnel" / "ml100k.yaml"
#: the synthetic world's: an impression log, whose clicks are the consumptions
SYNTHETIC_FUNNEL = DEFAULT_FUNNEL.with_name("synthetic.yaml")


def register(app: typer.Typer) -> None:
    """Add `init` and `recommend` to `app` (modules are imported only when a command runs)."""
    app.command("init")(init_cmd)
    app.command("recommend")(recommend_cmd)


# ---------------------------------------------------------------------------- shared helpers
def _emit(obj: dict[str, Any], as_json: bool, text: str, quiet: bool = False) -> None:
    if as_json:
        typer.echo(json.dumps(obj, default=str))
    elif not quiet:
        typer.echo(text)


def resolve_config(config: Path | None, dataset: str | None):
    """The funnel config: the given file, else the tuned MovieLens one for movielens-100k, the
    synthetic world's for synthetic, else FunnelConfig()'s defaults (which name no dataset's columns)."""
    from funnelrec.pipeline.config import FunnelConfig

    if config is not None:
        if not Path(config).is_file():
            raise ConfigError(f"{config}: config file not found")
        try:
            return FunnelConfig.load(config)
        except ConfigError as e:  # name the file; YAML errors already do
            msg = str(e)
            if str(config) in msg:
                raise
            raise type(e)(f"{config}: {msg.removeprefix('funnel config: ')}") from None
    if dataset in (None, "movielens-100k") and DEFAULT_FUNNEL.exists():
        return FunnelConfig.load(DEFAULT_FUNNEL)
    if dataset == "synthetic" and SYNTHETIC_FUNNEL.exists():
        return FunnelConfig.load(SYNTHETIC_FUNNEL)
    return FunnelConfig()


def load_data(cfg: Any, config: Path | None, dataset: str | None, path: Path | None):
    """The dataset: --dataset/--path when given, else the config's `data:` files (relative to the
    config's folder), else MovieLens-100k; label columns of the config's label map added, and
    the rows of its exposure events (impressions) left out."""
    from funnelrec.data import load_dataset

    if dataset is None and path is None and cfg.data.given:
        d = cfg.data.load(Path(config).resolve().parent if config is not None else ".")
    else:
        name = dataset or "movielens-100k"
        d = load_dataset(name, path=path) if path is not None else load_dataset(name)
    # impressions are exposure, not consumption: out before the split and every fit
    d.interactions = cfg.labels.fitted_rows(d.interactions)
    return d


def fit_funnel(cfg: Any, d: Any, seed: int, progress: bool, where: Path | None = None):
    """Check the config against the data (before any fit), then fit every component on the
    protocol's split (`fit_on_protocol`: the fit `evaluate funnel` scores)."""
    return fit_checked(cfg, d, seed, progress, where)[0]


def fit_checked(cfg: Any, d: Any, seed: int, progress: bool, where: Path | None = None):
    """(funnel, split): `check_against` (its error names `where`, the config file), then
    `fit_on_protocol`."""
    from funnelrec.pipeline.offline import fit_on_protocol
    from funnelrec.pipeline.validate import check_against

    try:
        check_against(cfg, d)
    except ConfigError as e:
        if where is not None:
            raise type(e)(f"{where}: {str(e).removeprefix('funnel config: ')}") from None
        raise
    funnel, split = fit_on_protocol(d, cfg, seed, progress)
    weaker = getattr(funnel.ranker_, "weaker_than_a_channel", lambda: None)()
    if weaker is not None:
        name, theirs, ours = weaker
        n = len(getattr(funnel.ranker_, "valid_users_", ()))
        typer.echo(f"warning: the ranker's validation NDCG@10 {ours:.4f} is below channel {name}'s own order "
                   f"({theirs:.4f}) on the same {n} held-out users — too few label users for rank.model "
                   f"{cfg.rank.model!r}, or too many epochs; try "
                   f"{'rank.model: lr, ' if cfg.rank.model != 'lr' else ''}rank.label_folds: 1, or more data",
                   err=True)
    return funnel, split


def default_artifact(config: Path | None, cfg: Any) -> Path:
    """Where `train` writes and `serve` reads: artifact/ beside a config that names its data,
    else artifacts/funnel."""
    if config is not None and cfg.data.given:
        return Path(config).resolve().parent / ARTIFACT_DIR
    return DEFAULT_ARTIFACT


def train_from_cli(dataset: str | None, path: Path | None, config: Path | None, out: Path | None, seed: int,
                   quiet: bool = False, as_json: bool = False) -> Path:
    """`funnelrec train`: load, check, fit, save; prints one line (or one JSON object)."""
    t0 = time.perf_counter()
    cfg = resolve_config(config, dataset)  # a bad config fails before the data loads
    d = load_data(cfg, config, dataset, path)
    funnel = fit_funnel(cfg, d, seed, progress=not (quiet or as_json), where=config)
    out = out if out is not None else default_artifact(config, cfg)
    funnel.save(out)
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    tasks = list(getattr(funnel.ranker_, "tasks_", ()))
    _emit({"artifact": str(out), "bytes": size, "components": len(funnel.components()), "users": d.n_users,
           "items": d.n_items, "interactions": d.interactions.height, "tasks": tasks,
           "seconds": round(time.perf_counter() - t0, 2)}, as_json,
          f"saved {out}/ ({size / 1e6:.1f} MB, {len(funnel.components())} components; tasks: {', '.join(tasks)})")
    return Path(out)


def artifact_for_serving(config: Path | None, artifact: Path | None, seed: int = 2020, quiet: bool = False) -> Path:
    """`serve`'s artifact: --artifact when given; with --config the artifact beside it, fitted
    first (as `train --config` would) when it does not exist yet."""
    from funnelrec.pipeline.artifact import MANIFEST

    if config is None:
        return artifact if artifact is not None else DEFAULT_ARTIFACT
    cfg = resolve_config(config, None)
    target = artifact if artifact is not None else default_artifact(config, cfg)
    if (Path(target) / MANIFEST).is_file():
        why = stale_reason(Path(target), cfg, config)
        if why is None:
            return Path(target)
        if not quiet:
            typer.echo(f"{target}/ is out of date ({why}): fitting the funnel of {config} again", err=True)
    elif not quiet:
        typer.echo(f"no artifact at {target}/: fitting the funnel of {config} first", err=True)
    return train_from_cli(None, None, config, target, seed, quiet=quiet)  # progress bars on stderr


def stale_reason(artifact: Path, cfg: Any, config: Path) -> str | None:
    """Why the artifact at `artifact` is not the fit of `config` as it is now, or None: its
    manifest's config differs from the file's (the first differing key is named), or a data
    file the config names was modified after the artifact was written."""
    import json

    from funnelrec.pipeline.artifact import MANIFEST
    from funnelrec.pipeline.funnel import _config_dict

    manifest = artifact / MANIFEST
    saved = json.loads(manifest.read_text()).get("config", {})
    now = json.loads(json.dumps(_config_dict(cfg)))  # tuples → lists, as the manifest holds them
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            return f"{config}'s {key}: section differs from the one it was fitted with"
    written = manifest.stat().st_mtime
    for _table, path in cfg.data.paths(Path(config).parent).items():
        if path is not None and Path(path).is_file() and Path(path).stat().st_mtime > written:
            return f"{Path(path).resolve()} was modified after it was fitted"
    return None


# ---------------------------------------------------------------------------- init
def init_cmd(interactions: Path = typer.Option(..., "--interactions", help="events file (CSV, TSV or Parquet)"),
             users: Path | None = typer.Option(None, "--users", help="user attributes file (optional)"),
             items: Path | None = typer.Option(None, "--items", help="item attributes file (optional)"),
             out: Path = typer.Option(Path("."), "--out", help="folder for schema.yaml and funnel.yaml"),
             user_col: str | None = typer.Option(None, "--user-col", help="the user id column (default: found by name)"),
             item_col: str | None = typer.Option(None, "--item-col", help="the item id column"),
             time_col: str | None = typer.Option(None, "--time-col", help="the event time column"),
             event_col: str | None = typer.Option(None, "--event-col", help="the event type column"),
             force: bool = typer.Option(False, "--force", help="overwrite schema.yaml / funnel.yaml"),
             quiet: bool = typer.Option(False, "--quiet", help="print nothing but errors"),
             as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Inspect your files and write a schema (schema.yaml) and a funnel config (funnel.yaml) that
    fit their columns; every line is commented. Then: funnelrec train --config OUT/funnel.yaml."""
    import os

    from funnelrec.data.discover import inspect_files
    from funnelrec.pipeline.config import FunnelConfig

    for p in (interactions, users, items):
        if p is not None and not Path(p).is_file():
            raise DataError(f"{p}: file not found")
    plan = inspect_files(interactions, users, items, user_col, item_col, time_col, event_col)
    out.mkdir(parents=True, exist_ok=True)
    schema_path, config_path = out / "schema.yaml", out / "funnel.yaml"
    for p in (schema_path, config_path):
        if p.exists() and not force:
            raise ConfigError(f"{p}: exists; pass --force to overwrite it")
    rel = {t: os.path.relpath(Path(info.path).resolve(), out.resolve()) for t, info in plan.tables.items()}
    schema_path.write_text(plan.schema_yaml())
    config_path.write_text(plan.config_yaml("schema.yaml", rel))
    cfg = FunnelConfig.load(config_path)  # what was written reads back (a bug here is ours, not the user's)
    lm = plan.label_map()
    roles = ", ".join(f"{k} → {lm[k][0] or ('exposure' if lm[k][2] == 'impression' else 'interaction')}"
                      if k in lm else k for k in plan.events) or "-"
    _emit({"schema": str(schema_path), "config": str(config_path), "users": plan.n_users, "items": plan.n_items,
           "interactions": plan.tables["interactions"].rows, "event_column": plan.event_column,
           "events": plan.events, "tasks": list(cfg.rank.tasks), "channels": [c.name for c in cfg.recall.channels],
           "time": plan.time_note}, as_json,
          f"wrote {schema_path} and {config_path}: {plan.tables['interactions'].rows:,} events, {plan.n_users:,} users, "
          f"{plan.n_items:,} items; time: {plan.time_note}\n"
          f"  events: {roles}\n"
          f"  channels: {', '.join(c.name for c in cfg.recall.channels)}; ranker tasks: {', '.join(cfg.rank.tasks)}\n"
          f"next: funnelrec train --config {config_path}   then   funnelrec serve --config {config_path}", quiet)


# ---------------------------------------------------------------------------- batch recommend
def _read_users(path: Path) -> list:
    from funnelrec.data.tabular import read_table

    df = read_table(path)
    if df.height == 0:
        raise DataError(f"{path}: no users (an empty file or a header only)")
    col = "user_id" if "user_id" in df.columns else df.columns[0] if df.width == 1 else None
    if col is None:
        raise DataError(f"{path}: no 'user_id' column; columns: {', '.join(df.columns)}")
    return df[col].drop_nulls().to_list()


def recommend_cmd(users: Path = typer.Option(..., "--users", help="file of user ids (column user_id, or one column)"),
                  k: int = typer.Option(10, "--k", help="items per user"),
                  out: Path = typer.Option(Path("recs.parquet"), "--out", help=".parquet or .csv: user_id, rank, "
                                                                               "item_id, score"),
                  config: Path | None = typer.Option(None, "--config", help="funnel config (serves its artifact/)"),
                  artifact: Path | None = typer.Option(None, "--artifact", help="a trained funnel directory"),
                  batch: int = typer.Option(512, "--batch", help="users per funnel run"),
                  quiet: bool = typer.Option(False, "--quiet"),
                  as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Batch scoring: the same funnel as `serve` (recall → merge → pre-rank → rank → re-rank) for
    every user of a file, written to one table; no online state is read (exposure, real-time
    history and rules are the server's). An unknown user gets the cold-start answer."""
    import numpy as np
    import polars as pl

    from funnelrec.pipeline.funnel import Funnel

    if isinstance(k, bool) or k < 1 or k > 10_000:
        raise ConfigError(f"--k must be an integer in [1, 10000], got {k}")
    if batch < 1:
        raise ConfigError(f"--batch must be ≥ 1, got {batch}")
    if out.suffix.lower() not in (".parquet", ".pq", ".csv"):
        raise ConfigError(f"--out {out}: write .parquet or .csv")
    t0 = time.perf_counter()
    path = artifact_for_serving(config, artifact, quiet=quiet or as_json)
    funnel = Funnel.load(path)
    ids = _read_users(users)
    idx = funnel.dataset_.user_ids.indices(ids)
    item_ids = funnel.dataset_.items["item_id"].to_numpy()
    rows_u, rows_r, rows_i, rows_s = [], [], [], []
    chunks = range(0, len(ids), batch)
    if not (quiet or as_json):
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="scoring users", unit="batch")
    for start in chunks:
        recs = funnel.run(idx[start:start + batch], k)
        for j, rec in enumerate(recs):
            n = len(rec.items)
            rows_u += [ids[start + j]] * n
            rows_r.append(np.arange(1, n + 1))
            rows_i.append(item_ids[rec.items])
            rows_s.append(rec.scores.astype(np.float32))
    table = pl.DataFrame({"user_id": pl.Series(rows_u, dtype=pl.String if isinstance(ids[0], str) else None),
                          "rank": np.concatenate(rows_r) if rows_r else np.zeros(0, np.int64),
                          "item_id": np.concatenate(rows_i) if rows_i else np.zeros(0, item_ids.dtype),
                          "score": np.concatenate(rows_s) if rows_s else np.zeros(0, np.float32)})
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        table.write_csv(out)
    else:
        table.write_parquet(out)
    unknown = int((idx < 0).sum())
    _emit({"out": str(out), "users": len(ids), "unknown_users": unknown, "rows": table.height, "k": k,
           "seconds": round(time.perf_counter() - t0, 2)}, as_json,
          f"wrote {out}: {table.height:,} rows for {len(ids):,} users ({unknown:,} unknown: cold start)", quiet)
