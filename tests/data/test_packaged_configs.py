"""configs/ ships inside the package: every YAML lives under src/funnelrec/configs, the
package-data globs of pyproject.toml name each of them (what a plain `pip install` copies),
and DEFAULT_FUNNEL resolves inside the installed package, not a source checkout."""

import fnmatch
import tomllib
from pathlib import Path

import funnelrec

ROOT = Path(__file__).resolve().parents[2]


def test_every_config_is_package_data():
    pkg = Path(funnelrec.__file__).parent
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["funnelrec"]
    files = sorted(p.relative_to(pkg).as_posix() for p in (pkg / "configs").rglob("*.yaml"))
    assert len(files) > 20  # ctr/, funnel/, sim/, experiments.yaml
    # fnmatch's * crosses '/', setuptools' does not: compare segment counts too
    missed = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert missed == []


def test_default_funnel_resolves_inside_the_package():
    from funnelrec.cli import DEFAULT_FUNNEL
    from funnelrec.eval.ctr import config_dir

    pkg = Path(funnelrec.__file__).resolve().parent
    assert DEFAULT_FUNNEL.is_file() and DEFAULT_FUNNEL.is_relative_to(pkg)
    assert config_dir().is_dir() and config_dir().is_relative_to(pkg)
    # the repo root's configs/ is the same directory (old paths in docs and benches keep working)
    assert (ROOT / "configs" / "funnel" / "ml100k.yaml").resolve() == DEFAULT_FUNNEL.resolve()
