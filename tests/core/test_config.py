"""The one config mechanism (core/config.py: pydantic over the frozen config dataclasses):
unknown keys and mistyped values are one-line ConfigErrors naming the key path from the config
root; ints are never coerced; every YAML shipped in configs/ loads, and a misspelt key injected
into any of them is named in the error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from funnelrec.core.config import from_dict, load_yaml
from funnelrec.core.errors import ConfigError, UnknownComponentError
from funnelrec.experiments.config import ExperimentsConfig, load_experiments_config
from funnelrec.pipeline.config import ChannelSpec, FunnelConfig, RecallSpec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Leaf:
    dim: int = 8
    rate: float = 0.5
    on: bool = False
    name: str = "x"
    kind: Literal["a", "b"] = "a"
    share: float | None = None
    sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Middle:
    leaves: list[Leaf] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Root:
    middle: Middle = field(default_factory=Middle)
    k: int = 10


@dataclass(frozen=True)
class Checked:
    lo: int
    hi: int = 10

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise ValueError(f"lo must be < hi, got {self.lo} ≥ {self.hi}")


def error(cls, data, where=None, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        from_dict(cls, data, where, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ paths in the errors


def test_unknown_key_at_depth_three_names_the_whole_path_and_the_known_keys():
    data = {"middle": {"leaves": [{"dim": 4}, {"dim": 4, "dimm": 5}]}}
    assert error(Root, data, "my config") == (
        "unknown key 'dimm' in my config.middle.leaves[1]; known: dim, rate, on, name, kind, share, sizes")
    assert error(Root, {"kk": 1}) == "unknown key 'kk' in Root; known: middle, k"
    # the funnel config, as its users see it
    msg = error(FunnelConfig, {"recall": {"channels": [{"name": "hot"}, {"name": "itemcf", "kk": 1}]}}, "funnel config")
    assert msg == "unknown key 'kk' in funnel config.recall.channels[1]; known: name, type, n, params"


def test_wrong_type_names_the_path_and_the_expected_type():
    data = {"middle": {"leaves": [{}, {}, {"dim": "x"}]}}
    assert error(Root, data, "my config") == "my config: middle.leaves[2].dim: expected an integer, got 'x'"
    assert error(Root, {"middle": {"weights": {"ctr": "high"}}}) == \
        "Root: middle.weights.ctr: expected a number, got 'high'"
    assert error(Root, {"middle": []}) == "Root: middle: expected a mapping, got []"
    assert error(Root, {"middle": {"leaves": {"dim": 1}}}) == "Root: middle.leaves: expected a list, got {'dim': 1}"
    assert error(Root, {"middle": {"leaves": [{"kind": "c"}]}}) == "Root: middle.leaves[0].kind: 'c' is not one of 'a' or 'b'"
    assert error(Checked, {}) == "Checked: missing required key 'lo'"
    assert error(Root, {"middle": {"leaves": [{"sizes": [1, 2.5]}]}}) == \
        "Root: middle.leaves[0].sizes[1]: expected an integer, got 2.5"


def test_nested_params_are_checked_against_the_registered_configs():
    bad_rank = {"rank": {"model": "deepfm", "params": {"embedding_dim": "x"}}}
    with pytest.raises(ConfigError, match=r"^funnel config: rank\.params\.embedding_dim: expected an integer, got 'x'$"):
        FunnelConfig.from_dict(bad_rank)
    bad_channel = {"recall": {"channels": [{"name": "hot"}, {"name": "cf", "type": "itemcf", "params": {"kk": 2}}]}}
    with pytest.raises(ConfigError, match=r"^unknown key 'kk' in funnel config\.recall\.channels\[1\]\.params; known: k, "):
        FunnelConfig.from_dict(bad_channel)
    with pytest.raises(UnknownComponentError, match=r"^funnel config: rank\.model: unknown ranking model 'nope'; known: "):
        FunnelConfig.from_dict({"rank": {"model": "nope"}})
    with pytest.raises(UnknownComponentError, match=r"^funnel config: recall\.channels\[0\]\.type: unknown recall"):
        FunnelConfig.from_dict({"recall": {"channels": [{"name": "a", "type": "nope"}]}})


def test_post_init_checks_become_config_errors_at_their_path():
    assert error(Checked, {"lo": 5, "hi": 3}) == "Checked: lo must be < hi, got 5 ≥ 3"
    exps = {"layers": [{"name": "rank"}], "experiments": [{"name": "a", "layer": "rank", "traffic": 0.5, "variants": [
        {"name": "control"}, {"name": "b", "share": 1.5}]}]}
    assert error(ExperimentsConfig, exps, "experiments config") == (
        "experiments config: experiments[0].variants[1]: variant 'b': share must be in (0, 1], got 1.5")
    # a ConfigError that already names its key is not prefixed with the path a second time
    assert error(FunnelConfig, {"rerank": {"method": "x"}}, "funnel config") == \
        "funnel config: rerank.method 'x'; known: none, cap, mmr"


# ------------------------------------------------------------------ type rules


@pytest.mark.parametrize("key,value,expected", [
    ("dim", 3, 3), ("dim", 2.0, "expected an integer, got 2.0"), ("dim", "3", "expected an integer, got '3'"),
    ("dim", True, "expected an integer, got True"),
    ("rate", 1, 1.0), ("rate", 0.25, 0.25), ("rate", True, "expected a number, got True"),
    ("rate", "0.5", "expected a number, got '0.5'"),
    ("on", True, True), ("on", 1, "expected true/false, got 1"), ("on", "yes", "expected true/false, got 'yes'"),
    ("name", "y", "y"), ("name", 3, "expected a string, got 3"),
    ("share", None, None), ("share", 1, 1.0), ("sizes", [1, 2], (1, 2)),
])
def test_int_float_bool_str_rules(key, value, expected):
    if isinstance(expected, str) and expected.startswith("expected"):
        assert error(Leaf, {key: value}) == f"Leaf: {key}: {expected}"
        return
    got = getattr(from_dict(Leaf, {key: value}), key)
    assert got == expected and type(got) is type(expected)


def test_absent_keys_keep_the_dataclass_defaults_and_instances_pass_through():
    a, b = from_dict(Middle, {}), from_dict(Middle, {})
    assert a == Middle() and a.leaves is not b.leaves  # default_factory: a fresh list each time
    assert from_dict(Root, {"k": 3}) == Root(middle=Middle(), k=3)
    spec = RecallSpec(channels=[ChannelSpec("hot", n=5)])
    assert from_dict(FunnelConfig, {"recall": spec}).recall is spec  # built in code: taken as is


# ------------------------------------------------------------------ every shipped YAML


def _load(path: Path, rel: str):
    """Load `path` with the loader the project uses for configs/`rel`."""
    from funnelrec.cli_experiments import load_report_config
    from funnelrec.eval.ctr import parse_ctr_config
    from funnelrec.simulate.config import load_sim_config

    if rel.startswith("ctr/"):
        return parse_ctr_config(path.stem, load_yaml(path))
    if rel.startswith("funnel/"):
        return FunnelConfig.load(path)
    if rel == "experiments.yaml":
        return load_experiments_config(path)
    if rel == "sim/report.yaml":
        return load_report_config(path)
    if rel.startswith("sim/"):
        return load_sim_config(path)
    raise AssertionError(f"no loader known for configs/{rel}: add it to _load")


#: sections that are free-form mappings on purpose (report `where`: column → value filters)
FREE_FORM = {("sim/report.yaml", "where")}

YAMLS = sorted(CONFIGS.rglob("*.yaml"))


def test_the_config_folder_is_found():
    assert len(YAMLS) >= 25 and any(p.name == "experiments.yaml" for p in YAMLS)


@pytest.mark.parametrize("path", YAMLS, ids=[p.relative_to(CONFIGS).as_posix() for p in YAMLS])
def test_every_shipped_yaml_loads_and_names_an_injected_unknown_key(path, tmp_path):
    rel = path.relative_to(CONFIGS).as_posix()
    _load(path, rel)
    data = load_yaml(path)
    out = tmp_path / path.relative_to(CONFIGS)
    out.parent.mkdir(parents=True, exist_ok=True)

    def rejected(bad: dict) -> str:
        out.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError) as e:
            _load(out, rel)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "unknown key 'zz_misspelt' in " in rejected({**data, "zz_misspelt": 1})
    sections = 0
    for key, value in data.items():  # one level down: every section that is a mapping or a list of them
        if (rel, key) in FREE_FORM:
            continue
        if isinstance(value, dict):
            bad, at = {**data, key: {**value, "zz_misspelt": 1}}, f".{key};"
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            bad, at = {**data, key: [{**value[0], "zz_misspelt": 1}, *value[1:]]}, f".{key}[0];"
        else:
            continue
        sections += 1
        msg = rejected(bad)
        assert "unknown key 'zz_misspelt' in " in msg and at in msg, msg
    assert sections >= 1  # every shipped config has at least one nested section
