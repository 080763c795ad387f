"""core/persist.py: every leaf and container type comes back exactly (type, dtype, shape,
values), identity and cycles are kept, a crafted state.json cannot import or run anything
outside funnelrec, and every registered ranking model (RANKERS.names(), cases in
tests/zoo_cases.py) is rebuilt through the registry with bit-identical outputs."""

import dataclasses
import enum
import json
import sys

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch

from funnelrec.core import persist
from funnelrec.core.errors import ArtifactError
from funnelrec.models.ranking.prerank import TwoTowerPrerank
from funnelrec.pipeline.config import ChannelSpec, MergeSpec
from funnelrec.train.trainer import Trainer, TrainerConfig
from zoo_cases import (
    build_case,
    case_ids,
    ctr_loss,
    require_case,
    split_ctr_problem,
    zoo_cases,
)


def assert_same(a, b, where="root"):
    """Exact equality written independently of persist: same type, and for arrays the same
    dtype, shape and values (NaN equal to NaN); containers compared element by element."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        if a.dtype == object:
            for i, (x, y) in enumerate(zip(a.ravel().tolist(), b.ravel().tolist())):
                assert_same(x, y, f"{where}[{i}]")
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and (a == b or (a != a and b != b)), where
    elif sp.issparse(a):
        assert a.format == b.format and a.shape == b.shape and a.dtype == b.dtype, where
        for attr in ("data", "indices", "indptr", "row", "col"):
            if hasattr(a, attr):
                assert_same(getattr(a, attr), getattr(b, attr), f"{where}.{attr}")
    elif isinstance(a, pl.DataFrame | pl.Series):
        assert a.dtype == b.dtype if isinstance(a, pl.Series) else a.schema == b.schema, where
        assert a.equals(b) and (not isinstance(a, pl.Series) or a.name == b.name), where
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.requires_grad == b.requires_grad, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(k, next(x for x in b if x == k), f"{where}.<key {k!r}>")
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, set | frozenset):
        assert a == b, where
    elif isinstance(a, float) and a != a:
        assert b != b, where
    elif isinstance(a, float):
        assert a == b and str(a) == str(b), where  # -0.0 stays -0.0
    else:
        assert a == b, where


def round_trip(obj, tmp_path, name="s"):
    files = persist.save_state(obj, tmp_path / name)
    return persist.load_state(tmp_path / name), files


def test_every_leaf_and_container_type_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    csr = sp.random(30, 20, density=0.2, format="csr", dtype=np.float32, random_state=1)
    csr.indices, csr.indptr = csr.indices.astype(np.int64), csr.indptr.astype(np.int64)  # scipy would narrow these
    tree = {
        "ints": [0, -7, 2**70, True, False, None],
        "floats": [1.5, -0.0, float("nan"), float("inf"), float("-inf"), 1e-310, 0.1 + 0.2],
        "str": "ünïcødé ✓", "bytes": b"\x00\xff",
        "tuple": (1, ("nested", 2.5), ()), "empty": [[], {}, (), set(), frozenset()],
        "set": {3, 1, 2}, "frozenset": frozenset({"a", "b"}),
        7: "int key", (1, "x"): "tuple key", None: "None key", 2.5: "float key",
        "f32_large": rng.standard_normal((300, 7)).astype(np.float32),
        "i64_small": np.arange(5, dtype=np.int64), "bool": rng.random(1000) < 0.5,
        "u8": rng.integers(0, 255, 50, dtype=np.uint8), "f16": np.array([1.0, np.nan, -np.inf], np.float16),
        "fortran": np.asfortranarray(rng.standard_normal((40, 30))), "zero_d": np.array(3.25),
        "empty_2d": np.zeros((0, 4), np.int32), "unicode": np.array(["a", "ßtr", ""] * 100),
        "objects": np.array(["x", None, 3, ("t", 1)], dtype=object),
        "datetime": np.array(["2026-01-01", "2026-12-02"], dtype="datetime64[s]"),
        "np_scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.float64("nan")],
        "dtype": np.dtype("int16"), "dtype_class": np.float32,
        "csr": csr, "csc": sp.random(10, 12, density=0.3, format="csc", random_state=2),
        "coo": sp.random(8, 9, density=0.3, format="coo", random_state=3),
        "csr_array": sp.csr_array(np.eye(4, dtype=np.float64)),
        "frame": pl.DataFrame({"id": [1, 2, 3], "tags": [["a", "b"], [], None], "x": [0.5, None, 2.0],
                               "s": ["u", "v", None], "cat": pl.Series(["p", "q", "p"], dtype=pl.Categorical)}),
        "empty_frame": pl.DataFrame(schema={"a": pl.Int32, "b": pl.List(pl.Utf8)}),
        "series": pl.Series("score", [1.0, 2.0, None], dtype=pl.Float32),
        "t_f32": torch.randn(50, 8), "t_i64": torch.arange(10), "t_bool": torch.rand(20) < 0.5,
        "t_bf16": torch.randn(4, 4).to(torch.bfloat16), "t_scalar": torch.tensor(2.0),
        "t_view": torch.arange(100, dtype=torch.float32).reshape(10, 10)[2:5],  # a view into a larger storage
        "param": torch.nn.Parameter(torch.randn(3, 3)), "t_grad": torch.randn(2, requires_grad=True),
        "dataclass": ChannelSpec("itemcf", n=300, params={"k": 50}),
        "nested_dataclass": MergeSpec(total=100, quotas={"hot": 5}, priority=["hot"]),
    }
    back, files = round_trip(tree, tmp_path)
    assert_same(tree, back)
    assert isinstance(back["param"], torch.nn.Parameter) and back["param"].requires_grad
    assert "state.json" in files and any(f.startswith("arrays/") for f in files)
    # leaves live in data files that load without pickle (an object array in a .npy would not)
    for rel in files:
        if rel.endswith((".npy", ".npz")):
            np.load(tmp_path / "s" / rel, allow_pickle=False)


def test_identity_and_cycles_are_kept(tmp_path):
    big = np.arange(1000)
    shared = {"a": big}
    tree = {"x": big, "y": big, "s1": shared, "s2": shared, "t": torch.ones(5)}
    tree["self"] = tree
    tree["t_again"] = tree["t"]
    back, files = round_trip(tree, tmp_path)
    assert back["x"] is back["y"] and back["s1"] is back["s2"] and back["s1"]["a"] is back["x"]
    assert back["self"] is back and back["t"] is back["t_again"]
    assert sum(f.startswith("arrays/") for f in files) == 1  # the shared array stored once


def test_funnelrec_objects_come_back_as_their_class(tmp_path):
    from funnelrec.recall.hot import HotConfig, HotRecall

    ch = HotRecall(HotConfig(), name="hot2")
    ch.items_ = np.arange(600)
    ch.fitted_ = True
    back, _ = round_trip(ch, tmp_path)
    assert type(back) is HotRecall and back.name == "hot2" and back.fitted_ is True
    assert_same(ch.config, back.config)
    assert_same(ch.items_, back.items_)


class _Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class _Local:
    x: int = 1


@pytest.mark.parametrize("value", [_Local(), _Colour.RED, lambda: 1, np.random.default_rng(0), object()],
                         ids=["dataclass", "enum", "lambda", "generator", "object"])
def test_non_funnelrec_values_are_refused_at_save_naming_the_attribute(value, tmp_path):
    with pytest.raises(ArtifactError, match=r"root\.inner\.v"):
        persist.save_state({"inner": {"v": value}}, tmp_path / "s")


def _crafted(tmp_path, root) -> str:
    d = tmp_path / "crafted"
    d.mkdir()
    (d / "state.json").write_text(json.dumps({"format": persist.FORMAT, "format_version": 1, "files": {},
                                              "root": root}))
    return d


@pytest.mark.parametrize("root", [
    {"__object__": "os:system", "state": {}},
    {"__object__": "this:x", "state": {}},
    {"__dataclass__": "this:x", "fields": {}},
    {"__type__": "this:x"},
    {"__enum__": "this:x", "name": "A"},
    {"__custom__": "this:x", "dir": "custom/1", "state": None},
    {"__module__": "funnelrec.models.ranking.prerank:TwoTowerPrerank", "builder": "this:x",
     "args": {"__tuple__": []}, "kwargs": {"__map__": {}}, "tensors": "m.", "keys": []},
    {"__object__": "funnelrec_evil.module:X"},
], ids=["os.system", "object", "dataclass", "type", "enum", "custom", "module-builder", "lookalike-package"])
def test_a_crafted_state_cannot_import_or_run_anything(root, tmp_path, monkeypatch, capsys):
    """`this` prints the Zen of Python when imported: it must stay unimported; os.system must
    not be called."""
    import os

    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    sys.modules.pop("this", None)
    with pytest.raises(ArtifactError, match="refusing class"):
        persist.load_state(_crafted(tmp_path, root))
    assert "this" not in sys.modules and not calls
    assert capsys.readouterr().out == ""


def test_bad_state_files_are_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(ArtifactError, match=r"state\.json: file missing"):
        persist.load_state(tmp_path)
    d = _crafted(tmp_path, {"__object__": "funnelrec.recall.hot:NoSuchClass", "state": {}})
    with pytest.raises(ArtifactError, match=r"unknown class 'funnelrec.recall.hot:NoSuchClass'"):
        persist.load_state(d)
    state = json.loads((d / "state.json").read_text())
    state["format_version"] = 99
    (d / "state.json").write_text(json.dumps(state))
    with pytest.raises(ArtifactError, match="format version 99"):
        persist.load_state(d)
    persist.save_state({"a": np.arange(1000)}, tmp_path / "ok")
    (f,) = (tmp_path / "ok" / "arrays").iterdir()
    f.unlink()
    with pytest.raises(ArtifactError, match=rf"{f.name}: file missing"):
        persist.load_state(tmp_path / "ok")


# ---------------------------------------------------------------- torch modules
CASES = zoo_cases()


@pytest.fixture(scope="module")
def problem():
    return split_ctr_problem(600, 500)


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=case_ids(CASES))
def test_every_ranker_is_rebuilt_through_the_registry_bit_identically(name, cfg, problem, tmp_path):
    """Trained one epoch (so weights, BN statistics and boosters are past their init), saved
    inside a holder object, loaded: same class, eval mode, every task's logits equal bit for
    bit — the rebuilt model's own random init is fully overwritten."""
    spec, train, test = problem
    model = build_case(name, require_case(name, cfg), spec, train, seed=3)
    Trainer(TrainerConfig(epochs=1, batch_size=128, lr=1e-2, seed=3, num_threads=1)).fit(model, ctr_loss, train)
    model.eval()
    with torch.inference_mode():
        want = model(test)
    torch.manual_seed(12345)  # the rebuild draws a different init
    back, _ = round_trip({"model_": model}, tmp_path)
    m = back["model_"]
    assert type(m) is type(model) and not m.training
    assert all(not sub.training for sub in m.modules())
    with torch.inference_mode():
        got = m(test)
    assert list(got) == list(want)
    for task in want:
        assert torch.equal(got[task], want[task]), f"{name}: task {task} differs after the round trip"


def test_a_module_without_a_constructor_record_is_an_error_naming_it(tmp_path):
    holder = {"ranker": {"net": torch.nn.Linear(3, 2)}}
    with pytest.raises(ArtifactError, match=r"root\.ranker\.net: nn\.Module .*no constructor record"):
        persist.save_state(holder, tmp_path / "s")


def test_tied_modules_stay_tied_and_training_flags_come_back(tmp_path):
    m = TwoTowerPrerank(n_embeddings=30, dim=4, hidden=(8,), emb_dim=6, n_dense=2)
    m.eval()
    m.item_tower.train()  # a mixed state: one submodule in training mode
    m.dense.weight.requires_grad_(False)
    back, _ = round_trip(m, tmp_path)
    assert back.user_tower.emb is back.user_emb  # one table, looked up by the tower
    assert not back.training and back.item_tower.training and not back.user_tower.training
    assert not back.dense.weight.requires_grad and back.user_emb.weight.requires_grad
    b = {"user": torch.tensor([[1, 2], [3, 0]]), "item": torch.tensor([[4, 5, 0], [6, 0, 0]]),
         "dense": torch.rand(2, 2)}
    back.eval(), m.eval()
    with torch.inference_mode():
        assert torch.equal(back(b)["ctr"], m(b)["ctr"])


def test_a_module_that_does_not_take_its_weights_is_a_clear_error(tmp_path):
    m = TwoTowerPrerank(n_embeddings=30, dim=4)
    persist.save_state(m, tmp_path / "s")
    state = json.loads((tmp_path / "s" / "state.json").read_text())
    state["root"]["args"]["__tuple__"][0] = 31  # as if the constructor now built another size
    (tmp_path / "s" / "state.json").write_text(json.dumps(state))
    with pytest.raises(ArtifactError, match="does not take the saved weights"):
        persist.load_state(tmp_path / "s", verify=False)
