"""features/ sits below models/, train/, pipeline/ and serving/ (docs/ARCHITECTURE.md): none of its
modules may import them, not even inside a function."""

import ast
from pathlib import Path

import funnelrec.features

ABOVE = ("funnelrec.models", "funnelrec.train", "funnelrec.pipeline", "funnelrec.serving")


def imported_modules(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_features_import_nothing_above_them():
    root = Path(funnelrec.features.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert {"encoder.py", "spec.py", "base.py"} <= {f.name for f in files}
    upward = {f"{f.relative_to(root)}: {m}" for f in files for m in imported_modules(f) if m.startswith(ABOVE)}
    assert not upward, upward


def test_the_walker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from funnelrec.models.ranking.base import FeatureSpec\n    import funnelrec.train\n")
    assert imported_modules(f) == {"funnelrec.models.ranking.base", "funnelrec.train"}


def test_feature_spec_keeps_its_old_import_path():
    from funnelrec.features.spec import FeatureSpec
    from funnelrec.models.ranking.base import FeatureSpec as Old

    assert Old is FeatureSpec
