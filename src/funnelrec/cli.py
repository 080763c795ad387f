"""The funnelrec command line: data, train, evaluate, serve, demo.

Every user-caused error (unknown dataset, missing file, bad config) prints one line
`error: …` to stderr and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from funnelrec.core.errors import FunnelrecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="funnelrec: the recommendation funnel.")
evaluate_app = typer.Typer(no_args_is_help=True, help="Offline evaluation.")
app.add_typer(evaluate_app, name="evaluate")

from funnelrec.cli_data import DEFAULT_ARTIFACT, DEFAULT_FUNNEL  # noqa: E402, F401, I001  (defined beside init)


def _load(dataset: str, path: Path | None):
    from funnelrec.data import load_dataset

    return load_dataset(dataset, path=path) if path is not None else load_dataset(dataset)




def _print_table(report: dict[str, Any]) -> None:
    rows = [("channel " + n, m) for n, m in report["channels"].items()]
    rows.append(("merged candidates", report["merged"]))
    rows.append(("FUNNEL (top-10)", report["funnel"]))
    cols = ["recall@10", "ndcg@10", "recall@200", f"recall@{report['merged']['size']}", "hit@10", "mrr@10"]
    cols = [c for c in dict.fromkeys(cols) if any(c in m for _, m in rows)]
    head = f"{'':<24}" + "".join(f"{c:>13}" for c in cols)
    typer.echo(f"\nprotocol {report['protocol']} · {report['dataset']} · {report['users']} test users")
    typer.echo(head)
    typer.echo("-" * len(head))
    for name, m in rows:
        typer.echo(f"{name:<24}" + "".join(f"{m[c]:>13.4f}" if c in m else f"{'':>13}" for c in cols))
    if report["dataset"] == "movielens-100k":  # the reference figures exist for this dataset only
        typer.echo("RecBole 1.2.1, same protocol: Pop NDCG@10 0.101 · ItemKNN R@10 0.247 NDCG@10 0.283 · "
                   "BPR R@10 0.247 NDCG@10 0.294")


@app.command()
def data(dataset: str = typer.Option("movielens-100k", help="dataset name"),
         path: Path | None = typer.Option(None, help="local folder with the dataset files"),
         config: Path | None = typer.Option(None, help="a funnel config naming its data: (`funnelrec init`)")) -> None:
    """Load a dataset (downloading/caching it if needed) and print its summary."""
    if config is not None:
        from funnelrec.cli_data import load_data, resolve_config

        d = load_data(resolve_config(config, None), config, None, None)
    else:
        d = _load(dataset, path)
    typer.echo(json.dumps(d.summary(), indent=2, default=str))


@app.command()
def train(dataset: str | None = typer.Option(None, help="dataset name (default: the config's data: files, "
                                                       "else movielens-100k)"),
          path: Path | None = typer.Option(None),
          config: Path | None = typer.Option(None, help="funnel YAML config (default: configs/funnel/ml100k.yaml "
                                                       "on MovieLens; `funnelrec init` writes one for your files)"),
          out: Path | None = typer.Option(None, help="where to write the trained funnel (default: artifact/ beside "
                                                     "a config with data:, else artifacts/funnel)"),
          seed: int = typer.Option(2020),
          quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
          as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
          nproc: int = typer.Option(1, "--nproc", help="data-parallel training processes (torchrun + DDP; "
                                                       "rank 0 saves)")) -> None:
    """Train the funnel (channels + ranker) on a per-user random split and save it; the config is
    checked against the data before anything is fitted."""
    from funnelrec.cli_data import train_from_cli

    if nproc != 1:
        from funnelrec.cli_distributed import launch_train

        raise typer.Exit(launch_train(nproc, dataset, path, config, out, seed, quiet, as_json))

    train_from_cli(dataset, path, config, out, seed, quiet=quiet, as_json=as_json)


@evaluate_app.command("funnel")
def evaluate_funnel_cmd(dataset: str | None = typer.Option(None, help="dataset name (default: the config's "
                                                                   "data: files, else movielens-100k)"),
                        path: Path | None = typer.Option(None),
                        config: Path | None = typer.Option(None, help="funnel YAML config (default: "
                                                           "configs/funnel/ml100k.yaml on MovieLens)"),
                        seed: int = typer.Option(2020),
                        as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Evaluate every channel, the merged set and the funnel on the RecBole protocol: the funnel
    `funnelrec train` fits for the same config, data and seed."""
    from funnelrec.cli_data import fit_checked, load_data, resolve_config
    from funnelrec.pipeline.offline import evaluate_funnel

    cfg = resolve_config(config, dataset)  # a bad config fails before the data loads
    d = load_data(cfg, config, dataset, path)
    fitted = fit_checked(cfg, d, seed, progress=not as_json, where=config)
    report = evaluate_funnel(d, cfg, seed=seed, fitted=fitted)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        _print_table(report)


@evaluate_app.command("ctr")
def evaluate_ctr_cmd(dataset: str = typer.Option("movielens-100k"), model: str = typer.Option("deepfm"),
                     config: Path | None = typer.Option(None, help="model YAML overrides"),
                     seed: int = typer.Option(2020), as_json: bool = typer.Option(False, "--json"),
                     tasks: str | None = typer.Option(None, help="multi-task protocol, e.g. ctr,like "
                                                      "(ctr: rating ≥ 4, like: rating = 5)"),
                     domain: str = typer.Option("gender", help="users column used as scenario/domain (with --tasks)"),
                     plot: Path | None = typer.Option(None, "--plot", help="write the test split's ROC curve and "
                                                      "reliability diagram (PNG) into this folder")
                     ) -> None:
    """Train and evaluate one ranking model on the CTR protocol (rating ≥ 4, global RS 0.8/0.1/0.1)."""
    from funnelrec.core.config import load_yaml
    from funnelrec.eval.ctr import evaluate_ctr

    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    result = evaluate_ctr(_load(dataset, None), model, load_yaml(config) if config else None, seed=seed,
                          tasks=task_list, domain=domain, plot_dir=plot)
    if as_json:
        typer.echo(json.dumps(result))
        return
    rows = list(result.items())
    if task_list is not None:  # one block per task
        rows = [(k, v) for k, v in rows if k != "tasks"]
        rows += [(f"{t}.{k}", v) for t, block in result["tasks"].items() for k, v in block.items()]
    typer.echo("\n".join(f"{k:>22}: {v}" for k, v in rows))


@app.command()
def serve(artifact: Path | None = typer.Option(None, help="a funnel saved by `funnelrec train` (default: "
                                                         "artifacts/funnel, or artifact/ beside --config)"),
          config: Path | None = typer.Option(None, "--config", help="a funnel config: serve its artifact, fitting "
                                                                   "it first when there is none yet"),
          host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          state_dir: Path = typer.Option(Path("state"), help="the online state (SQLite): event log, exposure "
                                         "filters, cached results, history, counters, catalogue"),
          redis_url: str | None = typer.Option(None, help="redis://host:port/db for state shared by workers"),
          stream_retention_s: int = typer.Option(
              7 * 86400, help="with --redis-url: seconds of events the feedback stream keeps (trimmed at each "
                              "append; 0 = never trimmed). A learner further behind loses events and logs it"),
          log_retention_s: int = typer.Option(
              0, help="seconds of events the event log (state_dir/events.db) keeps, trimmed as feedback arrives "
                      "(0 = every event is kept: the log grows with the traffic). A learner further behind loses "
                      "events and logs it; a retry of an older event id is stored again; experiment reports "
                      "read from the log cover the retained events only"),
          experiments: Path | None = typer.Option(None, help="experiments YAML (layers, variants, rollouts)"),
          workers: int = typer.Option(1, help="worker processes on one port (one per core)"),
          threads: int = typer.Option(1, help="torch threads per worker"),
          max_in_flight: int = typer.Option(64, help="requests served at once; more get 503"),
          max_batch: int = typer.Option(8, help="/recommend requests waiting together run as one batch of at "
                                                "most this many (dynamic batching); 1 = one by one"),
          admin_token_file: Path | None = typer.Option(
              None, help="file with the X-Admin-Token of /admin/*, catalogue routes and debug "
                         "(else $FUNNELREC_ADMIN_TOKEN); required off loopback"),
          watch: Path | None = typer.Option(None, "--watch", help="a `funnelrec learn --served` directory: serve "
                                                                  "its CURRENT version and reload new ones")) -> None:
    """Serve a trained funnel over HTTP: POST/GET /recommend, POST /feedback, GET /similar,
    /health, /metrics, POST /admin/reload, OpenAPI at /docs."""
    from funnelrec.cli_data import artifact_for_serving
    from funnelrec.serving.__main__ import ServeSettings, run

    artifact = artifact_for_serving(config, artifact)
    code = run(ServeSettings(artifact=str(artifact), state_dir=str(state_dir), redis_url=redis_url,
                             experiments=None if experiments is None else str(experiments), host=host, port=port,
                             max_in_flight=max_in_flight, max_batch=max_batch, threads=threads, workers=workers,
                             admin_token_file=None if admin_token_file is None else str(admin_token_file),
                             log_level="info", watch=None if watch is None else str(watch),
                             stream_retention_s=stream_retention_s, log_retention_s=log_retention_s))
    if code:
        raise typer.Exit(code)


@app.command()
def demo(serve_: bool = typer.Option(True, "--serve/--no-serve", help="serve after evaluating"),
         port: int = typer.Option(8000), config: Path | None = typer.Option(None)) -> None:
    """Load MovieLens-100k, train the funnel, print the evaluation table, then serve it."""
    from funnelrec.cli_data import fit_checked, resolve_config
    from funnelrec.data import load_dataset
    from funnelrec.pipeline.offline import evaluate_funnel

    cfg = resolve_config(config, "movielens-100k")  # a bad config fails before the data loads
    typer.echo("loading movielens-100k (downloaded once into the cache) …")
    d = load_dataset("movielens-100k")
    fitted = fit_checked(cfg, d, 2020, progress=True, where=config)
    _print_table(evaluate_funnel(d, cfg, fitted=fitted))
    if serve_:
        import uvicorn

        from funnelrec.pipeline.service import RecommenderService, ServiceConfig
        from funnelrec.serving.app import create_app

        service = RecommenderService(fitted[0], ServiceConfig(state_dir="state"))
        typer.echo(f"\nserving on http://127.0.0.1:{port}  — try: curl 'http://127.0.0.1:{port}/recommend?user_id=196&k=10'")
        from funnelrec.serving.transport import CoalescingHttpToolsProtocol

        uvicorn.run(create_app(service), host="127.0.0.1", port=port, log_level="warning",
                    http=CoalescingHttpToolsProtocol)


artifact_app = typer.Typer(no_args_is_help=True, help="Funnel artifact directories.")
app.add_typer(artifact_app, name="artifact")


@artifact_app.command("convert")
def artifact_convert(old: Path = typer.Argument(..., help="a format-1 funnel file (one pickle)"),
                     new: Path = typer.Argument(..., help="the artifact directory to write")) -> None:
    """Rewrite a format-1 pickled funnel as an artifact directory, once, offline. This UNPICKLES
    OLD, which can run any code it names: only for files you trust."""
    from funnelrec.pipeline.artifact import read_manifest
    from funnelrec.pipeline.convert import convert_pickle_artifact

    out = convert_pickle_artifact(old, new)
    parts = read_manifest(out)["components"]
    size = sum(e["bytes"] for e in parts.values())
    typer.echo(f"wrote {out}/ ({size / 1e6:.1f} MB, {len(parts)} components: {', '.join(parts)})")


def _register_subcommands() -> None:
    from funnelrec.cli_experiments import register
    from funnelrec.cli_online import register as register_online

    register(app)  # `funnelrec simulate`, `funnelrec experiments report`
    register_online(app)  # `funnelrec learn`, `replay`, `catalogue`
    __import__("funnelrec.cli_deploy").cli_deploy.register(app)  # `funnelrec deploy nginx`
    __import__("funnelrec.cli_engines").cli_engines.register(app)  # `funnelrec fit --engine spark`
    __import__("funnelrec.cli_data").cli_data.register(app)  # `funnelrec init`, `funnelrec recommend`


_register_subcommands()


def main() -> None:
    # click's standalone mode already maps usage errors (unknown option, bad value) to exit 2
    try:
        app()
    except FunnelrecError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
