"""One data-parallel CTR fit for tests/train/test_distributed.py: DCNv2 (the zoo's) on
tests/zoo_cases.py's synthetic CTR task, through the one Trainer. Run alone it trains in one
process; under torchrun each rank joins the group (train/distributed.py). Every rank writes
rank<r>.json: world size, rows its loss saw (their count, and their training-row ids in the order
its loss saw them), test AUC (scikit-learn), a digest of its weights."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: zoo_cases
from zoo_cases import make_ctr_problem  # noqa: E402

N_TRAIN, N_TEST = 4000, 2000


def run(out: Path, seed: int, epochs: int = 4) -> dict:
    from sklearn.metrics import roc_auc_score

    from funnelrec.models.ranking.common import build_ranker
    from funnelrec.train import distributed
    from funnelrec.train.losses import bce_loss
    from funnelrec.train.trainer import Trainer, TrainerConfig

    rank = distributed.init_from_env()
    spec, data = make_ctr_problem(n=N_TRAIN + N_TEST, seed=0)  # the same data whatever the training seed
    keys = ("sparse", "dense", "label")
    train = {k: data[k][:N_TRAIN] for k in keys}
    train["row"] = torch.arange(N_TRAIN)  # which training row: the model reads only sparse/dense
    test = {k: data[k][N_TRAIN:] for k in keys}
    torch.manual_seed(seed)
    model = build_ranker("dcnv2", spec, {"embedding_dim": 8, "hidden": [32, 16], "cross_layers": 2})
    loss = bce_loss()
    rows = [0]
    ids: list[int] = []

    def counting(m, b):
        rows[0] += len(b["label"])
        ids.extend(b["row"].tolist())
        return loss(m, b)

    Trainer(TrainerConfig(epochs=epochs, batch_size=200, lr=0.01, seed=seed, num_threads=1)).fit(
        model, counting, train, checkpoint=out / "model.pt")
    with torch.inference_mode():
        auc = float(roc_auc_score(test["label"].numpy(), model(test)["ctr"].numpy()))
    digest = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in model.state_dict().values())).hexdigest()
    res = {"rank": rank, "world": distributed.world_size(), "rows": rows[0], "ids": ids, "auc": auc, "digest": digest}
    (out / f"rank{rank}.json").write_text(json.dumps(res))
    distributed.shutdown()
    return res


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]))
