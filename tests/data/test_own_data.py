"""A newcomer's path from their own logs to a served funnel (issue #13), on a generated
e-commerce log in Parquet (string ids, millisecond times, missing values, extra columns):
`funnelrec init` → `train --config` → `serve --config` (a real uvicorn process) → /recommend,
with no file edited by hand; purchases train a conversion task; bought items stay out of later
answers for the rule's time; `/recommend?fields=title` returns titles; ten common mistakes
each end in one line naming the file, column or key, exit code 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from shop_world import init_shop


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`funnelrec ARGS` through cli.main (its error → exit-2 mapping included), in-process."""
    from funnelrec import cli

    monkeypatch.setattr(sys, "argv", ["funnelrec", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The generated shop's files, `funnelrec init` run on them, and the funnel trained from the
    written config (in-process: the same code path as the command line)."""
    from typer.testing import CliRunner

    from funnelrec.cli import app

    root = tmp_path_factory.mktemp("shop")
    paths, config = init_shop(root, n_events=5000, seed=3, n_users=250, n_items=200)
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--config", str(config), "--json"])
    assert r.exit_code == 0, (r.output, r.exception)
    import json

    summary = json.loads(r.stdout.strip().splitlines()[-1])  # --json: one object, nothing else on stdout
    return {"root": root, "paths": paths, "config": config, "train": summary}


def test_init_types_every_column_and_comments_every_line(shop):
    cfg_dir = shop["config"].parent
    schema = (cfg_dir / "schema.yaml").read_text()
    config = shop["config"].read_text()
    for text in (schema, config):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        bare = [ln for ln in lines if "#" not in ln and ln.strip() not in ("channels:",)]
        assert len(bare) <= 3, bare  # e.g. "epochs: 5" under a commented section
    from funnelrec.data.schema import Schema
    from funnelrec.pipeline.config import FunnelConfig

    sch = Schema.load(cfg_dir / "schema.yaml").to_dict()
    assert sch["interactions"]["timestamp"] == "time" and sch["items"]["tags"] == "multi"
    assert sch["items"]["price"] == "numeric" and sch["items"]["category"] == "categorical"
    assert "unix milliseconds" in schema  # ts_ms detected as ms
    cfg = FunnelConfig.load(shop["config"])
    assert cfg.data.columns == {"user_id": "visitor", "item_id": "sku", "timestamp": "ts_ms"}
    assert cfg.labels.event_column == "event_type"
    assert {e: r.task for e, r in cfg.labels.map.items()} == {"view": "ctr", "click": "ctr", "cart": "conversion",
                                                             "purchase": "conversion"}
    assert cfg.labels.map["purchase"].weight == 3.0 and cfg.labels.map["view"].means == "click"
    assert list(cfg.rank.tasks) == ["ctr", "conversion"]
    assert "title" not in cfg.rank.item_columns  # unique per item: shown, not learned from
    assert set(cfg.rank.item_columns) == {"category", "brand", "tags"}
    assert [r.types for r in cfg.rules] == [["purchase"]]
    # the loader reads what init wrote: ms → s (the generator's last event is ≤ now − 600 s)
    d = cfg.data.load(cfg_dir)
    ev = pl.read_parquet(shop["paths"]["interactions"])
    assert d.interactions.height == ev.height
    assert d.interactions["timestamp"].max() == ev["ts_ms"].max() // 1000
    assert d.interactions["timestamp"].max() < time.time()


def test_purchases_train_a_conversion_task(shop):
    from funnelrec.data.source import LabelSpec
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.pipeline.funnel import Funnel

    assert shop["train"]["tasks"] == ["ctr", "conversion"]
    cfg = FunnelConfig.load(shop["config"])
    assert cfg.rank.task_columns["conversion"] == "label_conversion"
    assert cfg.rank.weight_columns["conversion"] == "weight_conversion"
    # the label columns against the raw events, counted independently
    ev = pl.read_parquet(shop["paths"]["interactions"])
    lab = LabelSpec(cfg.labels.event_column, cfg.labels.map).label_columns(ev)
    n_conv = ev.filter(pl.col("event_type").is_in(["cart", "purchase"])).height
    assert lab["label_conversion"].sum() == n_conv
    assert lab.filter(pl.col("event_type") == "purchase")["weight_conversion"].unique().to_list() == [3.0]
    assert lab.filter(pl.col("event_type") == "view")["label_conversion"].sum() == 0
    f = Funnel.load(shop["train"]["artifact"])
    assert f.ranker_.tasks_ == ("ctr", "conversion")
    rec = f.run(np.array([0, 1, 2]), 20)
    ctr = np.concatenate([r.task_scores["ctr"] for r in rec])
    conv = np.concatenate([r.task_scores["conversion"] for r in rec])
    assert np.isfinite(conv).all() and abs(np.corrcoef(ctr, conv)[0, 1]) < 0.9999  # two heads, not one copied


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_config_answers_with_titles_and_keeps_bought_items_out(shop, tmp_path):
    """`funnelrec serve --config` as a user runs it (a uvicorn process), on the trained artifact."""
    port = _free_port()
    env = {**os.environ, "FUNNELREC_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "funnelrec.cli", "serve", "--config", str(shop["config"]),
                             "--port", str(port), "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
            time.sleep(0.3)
        items = pl.read_csv(shop["paths"]["items"])
        title = dict(zip(items["sku"].to_list(), items["title"].to_list()))
        r = httpx.get(f"{base}/recommend", params={"user_id": "v000003", "k": 10, "fields": "title,category"})
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        assert len(got) == 10 and not r.json()["cold_start"]
        assert all(it["attributes"]["title"] == title[it["item_id"]] for it in got)
        bought = got[0]["item_id"]
        fb = httpx.post(f"{base}/feedback", json={"user_id": "v000003", "events": [
            {"item_id": bought, "type": "purchase"}, {"item_id": got[1]["item_id"], "type": "view"}]})
        assert fb.status_code == 200 and fb.json()["logged"] == 2, fb.text  # "view": a configured event type
        again = httpx.get(f"{base}/recommend", params={"user_id": "v000003", "k": 50}).json()["items"]
        assert bought not in [it["item_id"] for it in again]
        bad = httpx.post(f"{base}/feedback", json={"user_id": "v000003", "events": [{"item_id": bought,
                                                                                       "type": "wishlist"}]})
        assert bad.status_code == 422 and "wishlist" in bad.json()["detail"]
        bad = httpx.get(f"{base}/recommend", params={"user_id": "v000003", "fields": "colour"})
        assert bad.status_code == 422 and "'colour'" in bad.json()["detail"]
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_config_refits_an_artifact_the_config_or_data_has_moved_past(shop, tmp_path):
    """`serve --config` serves the artifact beside the config only while it is that config's fit:
    an edited config section or a data file modified since the fit names the reason (and refits)."""
    import shutil

    from funnelrec.cli_data import resolve_config, stale_reason

    shutil.copytree(shop["root"], tmp_path / "shop")  # copy2: the files keep their mtimes
    config = tmp_path / "shop" / "cfg" / "funnel.yaml"
    artifact = Path(shop["train"]["artifact"])
    artifact = tmp_path / "shop" / artifact.relative_to(shop["root"])
    assert stale_reason(artifact, resolve_config(config, None), config) is None  # as fitted
    text = config.read_text()
    config.write_text(text.replace("epochs:", "epochs: 1 #", 1) if "epochs:" in text else text + "\nseed: 7\n")
    why = stale_reason(artifact, resolve_config(config, None), config)
    assert why is not None and "section differs" in why, why
    config.write_text(text)
    events = tmp_path / "shop" / Path(shop["paths"]["interactions"]).relative_to(shop["root"])
    later = artifact.joinpath("manifest.json").stat().st_mtime + 5
    os.utime(events, (later, later))
    why = stale_reason(artifact, resolve_config(config, None), config)
    assert why == f"{events.resolve()} was modified after it was fitted", why


def test_rule_keeps_a_purchase_out_for_its_ttl_after_history_forgot_it(shop, serve):
    """history_n = 2: three views after the purchase push it out of the real-time history (so
    the channels would offer it again); the rule's own record keeps it out for ttl_s. The same
    sequence with the purchase 31 days old (past the 30-day ttl) brings it back."""
    from funnelrec.pipeline.funnel import Funnel
    from funnelrec.pipeline.service import RecommenderService, ServiceConfig
    from funnelrec.serving.app import create_app

    funnel = Funnel.load(shop["train"]["artifact"])
    assert funnel.config.rules and funnel.config.rules[0].ttl_s == 30 * 86400
    user = "v000007"
    first = RecommenderService(funnel, ServiceConfig(history_n=2)).recommend(user, k=50).item_ids
    bought, views = first[0], first[-3:]
    now = int(time.time())
    answers = {}
    for age in (0, 31 * 86400):
        svc = RecommenderService(funnel, ServiceConfig(history_n=2))
        with serve(create_app(svc)) as base:
            events = [{"item_id": bought, "type": "purchase", "ts": now - age - 10}]
            events += [{"item_id": v, "type": "view", "ts": now - age + j} for j, v in enumerate(views)]
            assert httpx.post(f"{base}/feedback", json={"user_id": user, "events": events}).status_code == 200
            r = httpx.get(f"{base}/recommend", params={"user_id": user, "k": 50, "fields": "title"})
            answers[age] = [it["item_id"] for it in r.json()["items"]]
        assert bought not in [svc.current.item_ids[i] for i in svc.recent_items(svc.current, user)]
    assert bought not in answers[0]
    assert bought in answers[31 * 86400]  # the same events, past the ttl: the rule alone kept it out


def test_recommend_fields_title_on_movielens(fitted_funnel, serve, ml100k):
    from funnelrec.serving.app import create_app

    with serve(create_app(fitted_funnel)) as base:
        r = httpx.get(f"{base}/recommend", params={"user_id": "196", "k": 5, "fields": "title"})
        body = {"user_id": "196", "k": 5, "fields": ["title", "genres"]}
        p = httpx.post(f"{base}/recommend", json=body)
    assert r.status_code == 200 and p.status_code == 200
    titles = dict(zip(ml100k.items["item_id"].to_list(), ml100k.items["title"].to_list()))
    got = r.json()["items"]
    assert len(got) == 5 and all(it["attributes"] == {"title": titles[it["item_id"]]} for it in got)
    assert "Toy Story" in titles.values()  # real titles, not ids
    assert all(set(it["attributes"]) == {"title", "genres"} for it in p.json()["items"])


def test_batch_recommend_writes_the_served_answers(shop, tmp_path, monkeypatch, capsys):
    from funnelrec.pipeline.funnel import Funnel

    users = tmp_path / "users.csv"
    pl.DataFrame({"user_id": ["v000003", "v000004", "nobody"]}).write_csv(users)
    out = tmp_path / "recs.parquet"
    code, stdout, err = run_cli(monkeypatch, capsys, "recommend", "--config", shop["config"], "--users", users,
                                "--k", 7, "--out", out, "--json")
    assert code == 0, err
    import json

    assert json.loads(stdout)["unknown_users"] == 1  # --json: the one object on stdout
    code, stdout, err = run_cli(monkeypatch, capsys, "data", "--config", shop["config"])
    assert code == 0 and json.loads(stdout)["interactions"] == pl.read_parquet(shop["paths"]["interactions"]).height
    recs = pl.read_parquet(out)
    assert recs.height == 21 and recs["rank"].max() == 7
    f = Funnel.load(shop["train"]["artifact"])
    want = f.recommend("v000004", k=7)
    ids = f.dataset_.items["item_id"].to_numpy()[want.items].tolist()
    assert recs.filter(pl.col("user_id") == "v000004").sort("rank")["item_id"].to_list() == ids


def test_evaluate_funnel_scores_the_configs_own_data_and_the_funnel_train_saves(shop, tmp_path, monkeypatch,
                                                                                  capsys):
    """`evaluate funnel --config` reads the config's data: files (not MovieLens) and scores the
    funnel `train --config` fits — with `data.label_users` capping the ranker's label users, the
    same seeded sample in both."""
    import json

    from funnelrec.cli_data import load_data, resolve_config
    from funnelrec.data.splits import random_split_by_user
    from funnelrec.pipeline.funnel import Funnel
    from funnelrec.pipeline.offline import evaluate_funnel, fit_on_protocol

    text = shop["config"].read_text().replace("data:", "data:\n  label_users: 40", 1)
    text = text.replace("../data/", str(shop["paths"]["interactions"].parent) + "/")
    config = tmp_path / "funnel.yaml"
    config.write_text(text)
    (tmp_path / "schema.yaml").write_text((shop["config"].parent / "schema.yaml").read_text())
    assert resolve_config(config, None).data.label_users == 40
    code, stdout, err = run_cli(monkeypatch, capsys, "evaluate", "funnel", "--config", config, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    # the test users, counted from the raw file: the split's unit is the (user, item) pair, and
    # RecBole's rounding gives a user a test pair from 2 pairs on (int(0.1 · 2) = 0, but 0 < 0.2 < 1
    # moves one pair from train to test)
    ev = pl.read_parquet(shop["paths"]["interactions"])
    per_user = ev.unique(["visitor", "sku"]).group_by("visitor").len()
    assert report["users"] == per_user.filter(pl.col("len") >= 2).height
    assert report["protocol"] == "rs-811-by-pair" and ev.unique(["visitor", "sku"]).height < ev.height
    code, stdout, err = run_cli(monkeypatch, capsys, "train", "--config", config, "--out", tmp_path / "art",
                                "--json")
    assert code == 0, err
    saved = Funnel.load(tmp_path / "art")
    cfg = resolve_config(config, None)
    d = load_data(cfg, config, None, None)
    split = random_split_by_user(d.interactions, seed=2020)
    again = evaluate_funnel(d, cfg, fitted=(saved, split))
    # the cap reached the ranker: its validation slice is valid_fraction of 40 label users
    fitted, _ = fit_on_protocol(d, cfg, seed=2020)
    held = fitted.ranker_.valid_users_
    assert len(held) == max(1, round(40 * cfg.rank.valid_fraction)) < round(0.5 * split.valid["user_idx"].n_unique()
                                                                             * cfg.rank.valid_fraction)
    assert np.isin(held, split.valid["user_idx"].to_numpy()).all()
    assert again["funnel"]["ndcg@10"] == pytest.approx(report["funnel"]["ndcg@10"], abs=1e-9)
    assert again["funnel"]["recall@10"] == pytest.approx(report["funnel"]["recall@10"], abs=1e-9)


def test_train_warns_when_a_channel_beats_the_ranker_on_its_validation_users(shop, tmp_path, monkeypatch, capsys):
    """A ranker that learned nothing (lr 1e-12: its initial, random order) loses to a channel's own
    order on the held-out users: `train` still saves, and says so in one line on stderr."""
    text = shop["config"].read_text().replace("../data/", str(shop["paths"]["interactions"].parent) + "/")
    text = text.replace("rank:", "rank:\n  lr: 1.0e-12", 1)
    config = tmp_path / "funnel.yaml"
    config.write_text(text)
    (tmp_path / "schema.yaml").write_text((shop["config"].parent / "schema.yaml").read_text())
    code, stdout, err = run_cli(monkeypatch, capsys, "train", "--config", config, "--out", tmp_path / "art",
                                "--quiet")
    assert code == 0, err
    lines = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(lines) == 1 and "below channel" in lines[0] and "held-out users" in lines[0], err
    assert "rank.model: lr" not in lines[0]  # the config's model is lr already: not suggested
    assert (tmp_path / "art").is_dir()
    code, stdout, err = run_cli(monkeypatch, capsys, "train", "--config", shop["config"], "--out", tmp_path / "b",
                                "--quiet")
    assert code == 0 and "warning:" not in err  # the shop's real ranker beats its channels


# ------------------------------------------------------------------------- ten common mistakes
def _mistake(case: str, shop: dict, tmp: Path) -> tuple[list, list[str]]:
    """(the command's args, substrings the one-line error must hold) for one mistake."""
    p = shop["paths"]
    cfg_text = shop["config"].read_text()
    cfg_dir = shop["config"].parent

    def config(text: str) -> Path:
        q = cfg_dir / f"mistake-{case}.yaml"  # beside the real one: its data paths stay right
        q.write_text(text)
        return q

    if case == "wrong column name":
        q = config(cfg_text.replace("item_columns: [category, brand, tags]", "item_columns: [category, colour]"))
        return ["train", "--config", q], [str(q), "rank.item_columns[1]", "'colour'"]
    if case == "string in a numeric column":
        items = pl.read_csv(p["items"]).with_columns(pl.col("price").cast(pl.String))
        items = items.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("n/a")).otherwise(pl.col("price"))
                                   .alias("price"))
        bad = tmp / "items.csv"
        items.write_csv(bad)
        q = config(cfg_text.replace("items: ../data/items.csv", f"items: {bad}"))
        return ["train", "--config", q], [str(bad), "'price'", "'n/a'"]
    if case == "missing file":
        return ["init", "--interactions", tmp / "events.parquet"], [str(tmp / "events.parquet"), "not found"]
    if case == "empty file":
        bad = tmp / "events.csv"
        bad.write_text("visitor,sku,ts_ms,event_type\n")
        return ["init", "--interactions", bad], [str(bad), "no interactions"]
    if case == "duplicate ids":
        items = pl.read_csv(p["items"])
        bad = tmp / "items.csv"
        pl.concat([items, items.head(1)]).write_csv(bad)
        return ["init", "--interactions", p["interactions"], "--items", bad], [str(bad), "'sku'", "duplicate"]
    if case == "unknown config key":
        q = config(cfg_text.replace("  epochs: 5", "  epoch: 5"))
        return ["train", "--config", q], [str(q), "'epoch'", "rank"]
    if case == "unknown model name":
        q = config(cfg_text.replace("  model: lr", "  model: deepfmm"))
        return ["train", "--config", q], [str(q), "rank.model", "'deepfmm'"]
    if case == "bad k":
        users = tmp / "u.csv"
        users.write_text("user_id\nv000001\n")
        return ["recommend", "--config", shop["config"], "--users", users, "--k", "0"], ["--k", "got 0"]
    if case == "unparseable time":
        ev = pl.read_parquet(p["interactions"]).with_columns(pl.col("ts_ms").cast(pl.String))
        ev = ev.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("yesterday")).otherwise(pl.col("ts_ms"))
                             .alias("ts_ms"))
        bad = tmp / "events.parquet"
        ev.write_parquet(bad)
        return ["init", "--interactions", bad], [str(bad), "'ts_ms'", "'yesterday'"]
    if case == "YAML syntax error":
        q = config(cfg_text.replace("rank:", "rank: [", 1))
        return ["train", "--config", q], [str(q), "line"]
    raise AssertionError(case)


MISTAKES = ["wrong column name", "string in a numeric column", "missing file", "empty file", "duplicate ids",
            "unknown config key", "unknown model name", "bad k", "unparseable time", "YAML syntax error"]


@pytest.mark.parametrize("case", MISTAKES)
def test_a_common_mistake_is_one_line_naming_it(case, shop, tmp_path, monkeypatch, capsys):
    args, needles = _mistake(case, shop, tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err + out


def test_a_log_with_impressions_fits_and_scores_what_was_consumed(tmp_path):
    """`init` names an impression event exposure; the fit and the evaluation's positives leave its
    rows out, as online (where an impression never enters a history). Kept, they made itemCF/EASE
    learn what the old policy showed (docs/BENCHMARKS.md session 19)."""
    from typer.testing import CliRunner

    from funnelrec.cli import app
    from funnelrec.cli_data import load_data
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.simulate.ecommerce import write_ecommerce_files

    paths = write_ecommerce_files(tmp_path / "data", n_events=3000, seed=4, n_users=150, n_items=120)
    log = pl.read_parquet(paths["interactions"])
    rng = np.random.default_rng(0)
    shown = log.gather(rng.integers(log.height, size=2 * log.height)).with_columns(
        pl.Series("sku", log["sku"].sample(2 * log.height, with_replacement=True, seed=1)),
        pl.lit("impression").alias("event_type"), pl.col("ts_ms") - 1000)
    pl.concat([log, shown]).sort("ts_ms").write_parquet(tmp_path / "data" / "with_impressions.parquet")
    r = CliRunner().invoke(app, ["init", "--interactions", str(tmp_path / "data" / "with_impressions.parquet"),
                                 "--items", str(paths["items"]), "--out", str(tmp_path / "cfg")])
    assert r.exit_code == 0, r.output
    assert "impression → exposure" in r.output
    config = tmp_path / "cfg" / "funnel.yaml"
    line = next(x for x in config.read_text().splitlines() if x.strip().startswith("impression:"))
    assert line.split("#")[0].strip() == "impression: {}" and "exposure only" in line
    cfg = FunnelConfig.load(config)
    d = load_data(cfg, config, None, None)
    assert d.interactions.height == log.height and "impression" not in d.interactions["event_type"].to_list()
    # an in-process fit on the whole log leaves them out too: hot counts the consumptions only
    with_shown = pl.concat([d.interactions, d.interactions.head(500).with_columns(
        pl.lit("impression").alias("event_type"))])
    spec = FunnelConfig.from_dict({"recall": {"channels": [{"name": "hot", "params": {"tau_days": 0}}]},
                                   "labels": {"event_column": "event_type", "map": {"impression": {}, "view": {}}}})
    hot = FunnelBuilder(spec).fit(d, with_shown).channels_["hot"]
    assert float(hot.popularity_.sum()) == d.interactions.height
    # and the protocol's split of a dataset that kept its impressions scores consumptions only
    from funnelrec.pipeline.offline import fit_on_protocol

    d.interactions = with_shown
    _, split = fit_on_protocol(d, spec)
    assert sum(f.height for f in (split.train, split.valid, split.test)) == with_shown.height - 500
    assert "impression" not in split.test["event_type"].to_list()


ZERO = {"1": "0", "true": "false", "1.0": "0.0"}


@pytest.mark.parametrize("flag, values, one", [("clicked", [0, 1, 0, 0], "1"), ("is_click", [False, True, False, False], "true"),
                                               ("converted", ["0", "1", "0", "0"], "1"),
                                               ("click", [0.0, 1.0, 0.0, 0.0], "1.0")])
def test_init_reads_an_impression_log_with_a_0_1_flag(tmp_path, flag, values, one):
    """One row per item shown and a 0/1 column saying whether it was clicked (or bought): the 1s are
    the events, the 0s impressions — exposure only, so the fit and the evaluation count the 1s."""
    from typer.testing import CliRunner

    from funnelrec.cli import app
    from funnelrec.cli_data import load_data
    from funnelrec.pipeline.config import FunnelConfig

    n = 400
    rng = np.random.default_rng(0)
    log = pl.DataFrame({"uid": [f"u{k}" for k in rng.integers(40, size=n)],
                        "iid": [f"i{k}" for k in rng.integers(30, size=n)],
                        "ts": (1_700_000_000 + np.arange(n) * 60).tolist(),
                        flag: [values[k % 4] for k in range(n)]})
    path = tmp_path / ("log.parquet" if isinstance(values[0], (bool, float)) else "log.csv")
    log.write_parquet(path) if path.suffix == ".parquet" else log.write_csv(path)
    r = CliRunner().invoke(app, ["init", "--interactions", str(path), "--out", str(tmp_path / "cfg")])
    assert r.exit_code == 0, r.output
    config = tmp_path / "cfg" / "funnel.yaml"
    cfg = FunnelConfig.load(config)
    task, means = ("conversion", "purchase") if flag == "converted" else ("ctr", "click")
    assert cfg.labels.event_column == flag and set(cfg.labels.map) == {one, ZERO[one]}
    assert (cfg.labels.map[one].task, cfg.labels.map[one].means) == (task, means)
    assert ZERO[one] in cfg.labels.exposure_events() and list(cfg.rank.tasks) == [task]
    d = load_data(cfg, config, None, None)
    assert d.interactions.height == n // 4  # the shown-and-clicked rows only


def test_a_flag_beside_a_content_type_column_and_events_without_a_role(tmp_path):
    """A `type` column of content kinds names no consumption, so the 0/1 flag beside it is the
    event column; event names init does not know give `map: {}` (every row an interaction), not
    a config that fails to load."""
    from typer.testing import CliRunner

    from funnelrec.cli import app
    from funnelrec.pipeline.config import FunnelConfig

    n = 200
    base = {"uid": [f"u{k % 20}" for k in range(n)], "iid": [f"i{k % 17}" for k in range(n)],
            "ts": [1_700_000_000 + 60 * k for k in range(n)]}
    for name, extra, column in (("kinds", {"type": ["video", "article"] * (n // 2), "clicked": [k % 3 == 0 for k in range(n)]},
                                 "clicked"),
                                ("foreign", {"event": ["kaufen", "ansehen"] * (n // 2)}, "event")):
        pl.DataFrame({**base, **extra}).write_parquet(tmp_path / f"{name}.parquet")
        r = CliRunner().invoke(app, ["init", "--interactions", str(tmp_path / f"{name}.parquet"),
                                     "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        cfg = FunnelConfig.load(tmp_path / name / "funnel.yaml")
        assert cfg.labels.event_column == column
        assert set(cfg.labels.map) == ({"true", "false"} if name == "kinds" else set())


def test_a_column_that_is_not_a_0_1_flag_is_left_alone(tmp_path):
    from funnelrec.data.discover import _flag_column

    assert _flag_column(pl.DataFrame({"label": [0, 1, 2], "clicked": [1, 1, 1]})) == (None, None)
    assert _flag_column(pl.DataFrame({"score": [0, 1, 0]})) == (None, None)  # not a flag's name
    assert _flag_column(pl.DataFrame({"label": [0, 1, 2], "Clicked": [0, 1, None]})) == ("Clicked", ("1", "click"))


def test_header_only_csv_is_refused_before_any_fit(tmp_path):
    from funnelrec.core.errors import DataError
    from funnelrec.data import load_dataset

    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\n")
    (tmp_path / "schema.yaml").write_text("interactions: {user_id: categorical, item_id: categorical, "
                                          "timestamp: time}\n")
    with pytest.raises(DataError, match="no interactions"):
        load_dataset("tabular", interactions=tmp_path / "events.csv", schema=tmp_path / "schema.yaml")


def test_config_checked_against_data_before_any_fit(ml100k, ml100k_split):
    """A channel's missing column names its key before the first channel is fitted: the builder
    raises before fitting itemcf (whose fit would be the first thing to run)."""
    from funnelrec.core.errors import ConfigError
    from funnelrec.pipeline.builder import FunnelBuilder
    from funnelrec.pipeline.config import FunnelConfig
    from funnelrec.recall.itemcf import ItemCFRecall

    cfg = FunnelConfig.from_dict({"recall": {"channels": [{"name": "itemcf"}, {"name": "tag", "params":
                                                                                {"column": "genre"}}]}})
    fitted = []
    orig = ItemCFRecall.fit

    def spy(self, data):  # records that a fit started; the real fit runs
        fitted.append(self.name)
        return orig(self, data)

    ItemCFRecall.fit = spy
    try:
        with pytest.raises(ConfigError, match=r"recall.channels\[1\].params.column: 'genre'"):
            FunnelBuilder(cfg).fit(ml100k, ml100k_split.train, labels=ml100k_split.valid)
    finally:
        ItemCFRecall.fit = orig
    assert fitted == []
