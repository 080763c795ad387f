"""Two publishers swap different parts of one artifact while a reader loads it: both updates
survive, the reader never meets a missing file, and no old part is left behind."""

import threading

import numpy as np

from funnelrec.pipeline.artifact import load_artifact, read_manifest, save_artifact, save_component
from funnelrec.pipeline.funnel import FunnelStats


def _stats(v: float) -> FunnelStats:
    import scipy.sparse as sp

    return FunnelStats(sp.csr_matrix(np.full((3, 4), v, np.float32)), np.full(4, v, np.float32),
                       np.full(3, v, np.float32))


def test_concurrent_component_swaps_keep_every_update(tmp_path):
    d = tmp_path / "a"
    save_artifact(d, {"a": _stats(0.0), "b": _stats(0.0)}, config={})
    rounds = 6
    errors: list[BaseException] = []

    def publish(name: str) -> None:
        try:
            for r in range(1, rounds + 1):
                save_component(d, name, _stats(float(r)))
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    def read(stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                _, parts = load_artifact(d)
                assert set(parts) == {"a", "b"}
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    stop = threading.Event()
    reader = threading.Thread(target=read, args=(stop,))
    writers = [threading.Thread(target=publish, args=(n,)) for n in ("a", "b")]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    stop.set()
    reader.join(60)
    assert not errors, errors[0]
    _, parts = load_artifact(d)
    assert float(parts["a"].item_log_pop[0]) == rounds and float(parts["b"].item_log_pop[0]) == rounds
    live = {e["path"] for e in read_manifest(d)["components"].values()}
    on_disk = {p.name for p in d.iterdir() if p.is_dir()}
    assert on_disk == live, f"left behind: {on_disk - live}"
