"""`funnelrec artifact convert` on a real format-1 artifact: the fixture was pickled by session 2's
code (commit 899bb5d: `Funnel(cfg).fit(...).save(path)` on a 120-user synthetic world, itemCF + hot,
DCNv2 ranker, two-tower pre-ranker) together with that code's answers for users 0..9. The converted
artifact directory must give the same answers with today's code, and loading it runs no pickle."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from funnelrec.core.errors import ArtifactError
from funnelrec.pipeline.funnel import Funnel

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
OLD = FIXTURES / "funnel_format1_session2.pkl"


def test_a_session2_pickle_converts_to_the_same_answers(tmp_path, monkeypatch):
    want = json.loads((FIXTURES / "funnel_format1_session2.json").read_text())
    with pytest.raises(ArtifactError, match="format-1 pickled funnel"):
        Funnel.load(OLD)
    out = subprocess.run([sys.executable, "-m", "funnelrec.cli", "artifact", "convert", str(OLD), str(tmp_path / "new")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]

    def refuse(*a, **kw):
        raise AssertionError("loading a converted artifact unpickled something")

    # numba reads its own compile cache (local files, not the artifact) with pickle: at import for
    # most kernels, and when a model is built for the per-dimension kernels of nn/fused_fm.py. A
    # first load warms all of it; the second, under the patch, is the artifact's own reading.
    Funnel.load(tmp_path / "new")
    with monkeypatch.context() as m:
        m.setattr(pickle, "load", refuse)
        m.setattr(pickle, "loads", refuse)
        funnel = Funnel.load(tmp_path / "new")
    assert funnel.prerank_ is not None and type(funnel.ranker_.model_).registered_name == "dcnv2"
    assert funnel.dataset_.interactions.height == 0  # the served catalogue, not the old log
    items, scores = funnel.recommend_batch(np.array(want["users"]), 5)
    assert items.tolist() == want["items"]
    np.testing.assert_allclose(scores, want["scores"], rtol=1e-5, atol=1e-6)


def test_convert_refuses_what_is_not_a_format1_funnel(tmp_path):
    from funnelrec.pipeline.convert import convert_pickle_artifact

    bad = tmp_path / "x.pkl"
    bad.write_bytes(b"something else")
    with pytest.raises(ArtifactError, match="not a format-1"):
        convert_pickle_artifact(bad, tmp_path / "out")
    with pytest.raises(ArtifactError, match="not found"):
        convert_pickle_artifact(tmp_path / "missing.pkl", tmp_path / "out")
