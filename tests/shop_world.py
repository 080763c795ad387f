"""A generated shop (simulate/ecommerce.py: view / click / cart / purchase events) with
`funnelrec init` run on it, in-process through the command line's own code path.

In tests/ (on sys.path through tests/conftest.py): tests/data/test_own_data.py and the online
tests (the learner and the replay on a team's own funnel) use it."""

from pathlib import Path

from funnelrec.simulate.ecommerce import write_ecommerce_files


def init_shop(root: Path, out: str = "cfg", **world) -> tuple[dict, Path]:
    """(the shop's file paths, the funnel.yaml `funnelrec init` wrote under root/out); `world`:
    write_ecommerce_files' size and seed keywords."""
    from typer.testing import CliRunner

    from funnelrec.cli import app

    paths = write_ecommerce_files(Path(root) / "data", **world)
    r = CliRunner().invoke(app, ["init", "--interactions", str(paths["interactions"]), "--items", str(paths["items"]),
                                 "--users", str(paths["users"]), "--out", str(Path(root) / out), "--quiet"])
    assert r.exit_code == 0, r.output
    return paths, Path(root) / out / "funnel.yaml"
