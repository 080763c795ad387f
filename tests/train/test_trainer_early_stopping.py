"""Trainer early stopping, patience and checkpoints on a scripted validation curve.

The `validate` callback returns a fixed sequence of scores, so which epoch is best and when
training stops are known by hand; the callback also keeps its own copy of the weights it was
shown, the reference the restored weights and the checkpoint are compared against."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from funnelrec.train.trainer import Trainer, TrainerConfig, load_checkpoint

CURVE = [0.1, 0.3, 0.2, 0.25, 0.1, 0.05, 0.4, 0.0]


def _data(n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return {"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3}


def _mse(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((model(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean()


class ScriptedValidation:
    """Returns CURVE[epoch] and snapshots the weights it scored (a copy made here, not the
    Trainer's)."""

    def __init__(self, curve: list[float]) -> None:
        self.curve = curve
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def __call__(self, model: nn.Module) -> float:
        self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return self.curve[len(self.snapshots) - 1]


def _fit(patience: int, epochs: int = len(CURVE), checkpoint=None, curve=CURVE):
    torch.manual_seed(1)
    model = nn.Linear(3, 1)
    val = ScriptedValidation(curve)
    cfg = TrainerConfig(epochs=epochs, batch_size=16, lr=0.05, optimizer="sgd", patience=patience, num_threads=1)
    result = Trainer(cfg).fit(model, _mse, _data(), validate=val, checkpoint=checkpoint)
    return model, val, result


def _assert_weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# (patience, epochs run, best epoch 0-based): the best is 0.3 at epoch 1; epochs 2, 3, 4 score
# lower (0.25 < 0.3 is still no improvement), so patience p stops after epoch 1 + p.
@pytest.mark.parametrize("patience, epochs_run", [(1, 3), (2, 4), (3, 5)])
def test_patience_stops_after_that_many_epochs_without_improvement(patience, epochs_run):
    model, val, result = _fit(patience)
    assert result.epochs == epochs_run == len(val.snapshots)
    assert result.best_epoch == 1 and result.best_score == 0.3
    assert [row["valid"] for row in result.history] == CURVE[:epochs_run]
    # the weights restored are those the callback saw at epoch 1, not the last epoch's
    _assert_weights_equal(model.state_dict(), val.snapshots[1])
    assert not torch.equal(val.snapshots[1]["weight"], val.snapshots[-1]["weight"])  # training moved them


def test_a_late_improvement_resets_patience():
    # patience 5: epochs 2..5 are four bad epochs, then 0.4 at epoch 6 is the new best
    model, val, result = _fit(patience=5)
    assert result.epochs == len(CURVE) and result.best_epoch == 6 and result.best_score == 0.4
    _assert_weights_equal(model.state_dict(), val.snapshots[6])


def test_a_tie_is_not_an_improvement():
    model, val, result = _fit(patience=2, curve=[0.5, 0.5, 0.5, 0.9])
    assert result.epochs == 3 and result.best_epoch == 0
    _assert_weights_equal(model.state_dict(), val.snapshots[0])


def test_checkpoint_on_disk_holds_the_best_epochs_weights(tmp_path):
    path = tmp_path / "ckpt" / "model.pt"  # the parent folder is created
    model, val, result = _fit(patience=2, checkpoint=path)
    assert path.is_file()
    fresh = nn.Linear(3, 1)
    assert not torch.equal(fresh.weight, val.snapshots[1]["weight"])
    load_checkpoint(fresh, path)
    _assert_weights_equal(fresh.state_dict(), val.snapshots[result.best_epoch])
    assert not fresh.training  # loaded for inference
    x = _data()["x"]
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_without_validation_all_epochs_run_and_the_last_weights_stay(tmp_path):
    torch.manual_seed(1)
    model = nn.Linear(3, 1)
    cfg = TrainerConfig(epochs=4, batch_size=16, lr=0.05, optimizer="sgd", patience=1, num_threads=1)
    result = Trainer(cfg).fit(model, _mse, _data(), checkpoint=tmp_path / "last.pt")
    assert result.epochs == 4 and result.best_epoch == 3 and result.best_score == -math.inf
    assert [row["epoch"] for row in result.history] == [0.0, 1.0, 2.0, 3.0]
    assert all("valid" not in row for row in result.history)
    # the loss of a linear fit by SGD on noise-free linear data falls epoch over epoch
    losses = [row["loss"] for row in result.history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.5 * losses[0]
    fresh = load_checkpoint(nn.Linear(3, 1), tmp_path / "last.pt")
    _assert_weights_equal(fresh.state_dict(), model.state_dict())


def test_same_seed_trains_to_the_same_weights():
    a, _, _ = _fit(patience=2)
    b, _, _ = _fit(patience=2)
    _assert_weights_equal(a.state_dict(), b.state_dict())
