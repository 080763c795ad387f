"""pipeline/artifact.py: the versioned artifact directory. A funnel's components are saved and
loaded part by part with no pickle; a corrupt file fails its own part only; a format-1 pickle
gets the way out; every recall channel (RECALL_CHANNELS.names()) and every ranker
(RANKERS.names()) as the funnel's component answers identically, items and scores, after a
round trip."""

import hashlib
import json
import pickle

import numpy as np
import polars as pl
import pytest

from funnelrec.core import persist
from funnelrec.core.errors import ArtifactError
from funnelrec.core.registry import RANKERS, RECALL_CHANNELS
from funnelrec.core.types import RequestState
from funnelrec.data.dataset import TrainData
from funnelrec.pipeline.artifact import (
    PICKLE_MAGIC,
    component_dir,
    load_artifact,
    read_manifest,
    save_artifact,
    save_component,
)
from funnelrec.pipeline.builder import FunnelBuilder, build_channel
from funnelrec.pipeline.config import ChannelSpec, FunnelConfig
from funnelrec.pipeline.convert import convert_pickle_artifact
from funnelrec.pipeline.funnel import Funnel
from funnelrec.recall.base import RecallContext

N_USERS = 200  # the first users of ml-100k: every component fits in seconds


@pytest.fixture(scope="module")
def tiny(ml100k, ml100k_split):
    train = ml100k_split.train.filter(pl.col("user_idx") < N_USERS)
    valid = ml100k_split.valid.filter(pl.col("user_idx") < N_USERS)
    return ml100k, train, valid


@pytest.fixture(scope="module")
def funnel(tiny):
    ds, train, valid = tiny
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 80}, {"name": "hot", "n": 30}],
                   "merge": {"total": 100, "priority": ["itemcf", "hot"]}},
        "rank": {"epochs": 1, "label_folds": 0}, "prerank": {"enabled": True, "keep": 40, "epochs": 1}})
    return FunnelBuilder(cfg).fit(ds, train, labels=valid)


def _save(funnel, path):
    from funnelrec.pipeline.artifact import plain_data

    return save_artifact(path, funnel.components(), config=plain_data(funnel.config), meta={"note": "test"})


def _answers(funnel, users=np.arange(-1, N_USERS, 7)):
    return funnel.recommend_batch(users, 10)


def test_the_funnel_round_trips_through_the_directory(funnel, tmp_path):
    path = _save(funnel, tmp_path / "art")
    m = read_manifest(path)
    assert (m["format"], m["format_version"]) == ("funnelrec-artifact", 2)
    assert set(m["components"]) == set(funnel.components()) >= {"dataset", "stats", "channels/itemcf", "ranker",
                                                                  "prerank"}
    assert m["schema"]["items"]["genres"] == "List(String)" and m["meta"] == {"note": "test"}
    assert m["created"].endswith("+00:00")
    for entry in m["components"].values():  # checksums against hashlib over the files on disk
        for rel, digest in entry["files"].items():
            assert hashlib.sha256((path / entry["path"] / rel).read_bytes()).hexdigest() == digest
        assert entry["bytes"] == sum((path / entry["path"] / r).stat().st_size for r in entry["files"])
    manifest, parts = load_artifact(path)
    again = Funnel.from_components(FunnelConfig.from_dict(manifest["config"]), parts)
    a, b = _answers(funnel), _answers(again)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])  # bit for bit
    assert not list(tmp_path.glob("art.tmp-*"))


def test_parts_load_alone_and_a_flipped_byte_fails_only_its_part(funnel, tmp_path, monkeypatch):
    path = _save(funnel, tmp_path / "art")
    m = read_manifest(path)
    read_dirs = []
    real = persist.load_state
    monkeypatch.setattr("funnelrec.pipeline.artifact.load_state",
                        lambda d, **kw: read_dirs.append(d.name) or real(d, **kw))
    _, parts = load_artifact(path, parts=["ranker"])
    assert list(parts) == ["ranker"] and read_dirs == ["ranker"]
    # flip one byte of the ranker's largest file
    entry = m["components"]["ranker"]
    rel = max(entry["files"], key=lambda r: (path / "ranker" / r).stat().st_size)
    f = path / "ranker" / rel
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{rel}: checksum mismatch"):
        load_artifact(path, parts=["ranker"])
    _, parts = load_artifact(path, parts=["channels/itemcf", "stats"])  # the other parts still load
    before = funnel.channels_["itemcf"].recall(np.arange(20), 30)
    after = parts["channels/itemcf"].recall(np.arange(20), 30)
    np.testing.assert_array_equal(before.items, after.items)
    with pytest.raises(ArtifactError, match="no component 'rankr'; components: dataset"):
        load_artifact(path, parts=["rankr"])


def test_loading_never_unpickles(funnel, tmp_path, monkeypatch):
    path = _save(funnel, tmp_path / "art")

    def refuse(*a, **k):
        raise AssertionError("pickle used while loading an artifact")

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    _, parts = load_artifact(path)
    assert set(parts) == set(funnel.components())


def test_a_format1_pickle_gets_the_way_out(funnel, tmp_path):
    from funnelrec.core.artifact import save_pickle

    old = tmp_path / "funnel.pkl"
    save_pickle(funnel, old, PICKLE_MAGIC)
    with pytest.raises(ArtifactError, match=r"funnel\.pkl is a format-1 pickled funnel.*funnelrec train.*"
                                            r"funnelrec artifact convert OLD NEW"):
        load_artifact(old)
    # convert (unpickles, offline): even models pickled before constructor records existed
    for m in (funnel.ranker_.model_, funnel.prerank_.model_):
        del m.__dict__["_persist_init_"]
    try:
        save_pickle(funnel, old, PICKLE_MAGIC)
    finally:
        from funnelrec.pipeline.convert import _infer_record

        _infer_record(funnel.ranker_.model_)
        _infer_record(funnel.prerank_.model_)
    new = convert_pickle_artifact(old, tmp_path / "converted")
    manifest, parts = load_artifact(new)
    again = Funnel.from_components(FunnelConfig.from_dict(manifest["config"]), parts)
    np.testing.assert_array_equal(_answers(funnel)[1], _answers(again)[1])
    (tmp_path / "other.bin").write_bytes(b"\x80\x05garbage")
    with pytest.raises(ArtifactError, match="a file, not a funnelrec artifact directory"):
        load_artifact(tmp_path / "other.bin")
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "missing")


def test_a_failed_save_leaves_the_old_artifact_whole(funnel, tmp_path):
    path = _save(funnel, tmp_path / "art")
    before = read_manifest(path)
    bad = {**funnel.components(), "extra": {"fn": lambda: 0}}
    with pytest.raises(ArtifactError, match=r"root\.fn: cannot persist"):
        save_artifact(path, bad, config={})
    assert read_manifest(path) == before and not list(tmp_path.glob("art.tmp-*"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArtifactError, match="not a funnelrec artifact directory"):
        save_artifact(tmp_path / "plain", {"x": 1}, config={})


def test_one_part_is_swapped_in_place(funnel, tiny, tmp_path):
    ds, train, valid = tiny
    path = _save(funnel, tmp_path / "art")
    before = read_manifest(path)["components"]
    new_ch = build_channel(ChannelSpec("itemcf", n=80, params={"k": 5})).fit(TrainData(ds, train))
    save_component(path, "channels/itemcf", new_ch)
    after = read_manifest(path)["components"]
    assert {k: v for k, v in after.items() if k != "channels/itemcf"} == \
           {k: v for k, v in before.items() if k != "channels/itemcf"}
    assert not (path / before["channels/itemcf"]["path"]).exists()
    _, parts = load_artifact(path, parts=["channels/itemcf"])
    np.testing.assert_array_equal(parts["channels/itemcf"].recall(np.arange(30), 40).items,
                                  new_ch.recall(np.arange(30), 40).items)
    assert not np.array_equal(new_ch.recall(np.arange(30), 40).items,
                              funnel.channels_["itemcf"].recall(np.arange(30), 40).items)


def test_component_names_map_to_safe_directories():
    assert component_dir("channels/itemcf") == "channels/itemcf"
    assert component_dir("channels/item cf/v2.1") == "channels/item%20cf/v2.1"
    for bad in ("", "../x", "a//b", "./a"):
        with pytest.raises(ArtifactError):
            component_dir(bad)


def test_a_manifest_cannot_point_outside_the_artifact(funnel, tmp_path):
    path = _save(funnel, tmp_path / "art")
    m = json.loads((path / "manifest.json").read_text())
    m["components"]["ranker"]["path"] = "../elsewhere"
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="leaves the artifact directory"):
        load_artifact(path, parts=["ranker"])
    m["format_version"] = 3
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 3.*newer funnelrec"):
        read_manifest(path)


# ---------------------------------------------------------------- every registered component
def _channel_names():
    import funnelrec.recall  # noqa: F401  (registers every channel)

    return RECALL_CHANNELS.names()


CHANNEL_PARAMS = {  # small fits; everything else at its defaults
    "vector": {"epochs": 1, "batch_size": 512, "max_valid_users": 50,
               "model": {"embedding_dim": 8, "user_hidden": [16], "item_hidden": [16], "output_dim": 8}},
}


@pytest.mark.parametrize("name", _channel_names())
def test_every_recall_channel_round_trips(name, tiny, tmp_path):
    """Fitted on the tiny train set, saved as the artifact component "channels/<name>", loaded:
    the same items and scores for known, unknown and out-of-range users, without a context and
    with one carrying time, region, fresh history and cached results."""
    ds, train, _ = tiny
    ch = build_channel(ChannelSpec(name, n=30, params=CHANNEL_PARAMS.get(name, {}))).fit(TrainData(ds, train))
    save_artifact(tmp_path / "art", {f"channels/{name}": ch}, config={})
    _, parts = load_artifact(tmp_path / "art")
    back = parts[f"channels/{name}"]
    assert type(back) is type(ch) and back.name == ch.name
    users = np.array([-1, 0, 3, 17, 120, N_USERS - 1, N_USERS + 50])
    rng = np.random.default_rng(0)
    history = [rng.choice(ds.n_items, 3, replace=False) for _ in users]
    cached = [(rng.choice(ds.n_items, 8, replace=False), rng.random(8).astype(np.float32)) for _ in users]
    ctx = RecallContext(time=int(train["timestamp"].max()) + 86400, region=ds.users["region"][0],
                        extra={"history": history}, state=RequestState(history=history, cached=cached))
    answered = 0
    for context in (None, ctx):
        a, b = ch.recall(users, 30, context), back.recall(users, 30, context)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
        answered += int((a.items >= 0).sum())
    assert answered > 0  # the comparison is over real answers, not two empty batches


def _ranker_names():
    from funnelrec.models.ranking.common import load_all

    load_all()
    return RANKERS.names()


@pytest.mark.parametrize("name", _ranker_names())
def test_every_ranker_round_trips_as_the_funnels_ranker(name, tiny, tmp_path):
    """A tiny funnel with ranker `name` (1 epoch, the zoo's small config), its "ranker" part
    saved and loaded alone and swapped in: the same top-10 items and fused scores, bit for bit."""
    from zoo_cases import CONFIGS

    ds, train, valid = tiny
    multi = RANKERS.get(name).multi_task
    cfg = FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 50}, {"name": "hot", "n": 20}], "merge": {"total": 60}},
        "rank": {"epochs": 1, "model": name, "params": CONFIGS[name][0], "label_folds": 0, "batch_size": 256,
                 "tasks": ["ctr", "like"] if multi else ["ctr"], "domain_column": "gender"}})
    f = FunnelBuilder(cfg).fit(ds, train, labels=valid)
    save_artifact(tmp_path / "art", f.components(), config={})
    _, parts = load_artifact(tmp_path / "art", parts=["ranker"])
    again = f.with_components(ranker=parts["ranker"])
    users = np.arange(0, N_USERS, 5)
    a, b = f.recommend_batch(users, 10), again.recommend_batch(users, 10)
    assert (a[0] >= 0).all()
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_the_cli_converts_a_format1_file(funnel, tmp_path):
    from typer.testing import CliRunner

    from funnelrec.cli import app
    from funnelrec.core.artifact import save_pickle

    save_pickle(funnel, tmp_path / "old.pkl", PICKLE_MAGIC)
    res = CliRunner().invoke(app, ["artifact", "convert", str(tmp_path / "old.pkl"), str(tmp_path / "new")])
    assert res.exit_code == 0, res.output
    assert "components: dataset, stats, channels/itemcf" in res.output
    manifest, parts = load_artifact(tmp_path / "new", parts=["ranker"])
    assert manifest["meta"]["converted_from"] == str(tmp_path / "old.pkl")
    np.testing.assert_array_equal(_answers(funnel.with_components(ranker=parts["ranker"]))[1], _answers(funnel)[1])


def test_memory_mapped_parts_answer_the_same(funnel, tmp_path):
    """mmap=True maps the .npy arrays read-only (one page-cache copy for all workers; sparse
    matrices are read into memory): nothing a request runs writes into them, same answers."""
    path = _save(funnel, tmp_path / "art")
    manifest, parts = load_artifact(path, mmap=True)
    assert isinstance(parts["stats"].item_log_pop, np.memmap)
    assert not parts["stats"].item_log_pop.flags.writeable
    again = Funnel.from_components(FunnelConfig.from_dict(manifest["config"]), parts)
    np.testing.assert_array_equal(_answers(funnel)[1], _answers(again)[1])
