"""The publish guardrail: a new ranker version must not be worse than the served one.

Both rankers score the same held-out window (the latest labelled samples, which the update did
not train on), with the features the served funnel gives them (online/samples.py), and

    refuse  ⇔  AUC(candidate) < AUC(served) − margin

AUC over the task's label (`task_targets`: without a label map ctr ← any event), `funnelrec.eval.metrics.auc` (ties count ½).
`group="user"` judges by GAUC instead: the AUC of each user's samples (users with both classes),
averaged weighted by their numbers of samples — the order a request serves is within one user,
and a pooled AUC also scores how users' score levels compare, which an update can move a lot
(a user-id weight, the activity feature) without changing any user's ranking.
A window with one class only (or none: the learner's first step) has no AUC, and one with fewer
than `min_per_class` samples of a class (default 10) has one too noisy to judge a margin by (a
held-out AUC of 3 positives among 30 has a standard error near 0.15, fifteen margins of 0.01:
on ml-100k's replay such windows accepted 43 of 107 updates by chance, and the accepted ones
cost NDCG@10). Nothing then shows the candidate is not worse, so by default it is refused too
(the message says why);
`on_undefined="accept"` publishes it instead (logged). Every verdict is logged with both figures.

    guard = AUCGuardrail(margin=0.01)
    verdict = guard.check(served_ranker, candidate_ranker, rank_samples(funnel, holdout))
    # → {"served_auc": …, "candidate_auc": …, "margin": 0.01, "n": …} or GuardrailRefused
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from funnelrec.core.errors import ConfigError, GuardrailRefused
from funnelrec.eval.metrics import auc
from funnelrec.online.samples import RankSamples, TaskTarget, task_targets

log = logging.getLogger("funnelrec.online.guardrail")
#: "none": one AUC over the window; "user": each user's AUC, averaged weighted by its samples
GROUPS = ("none", "user")


def ranker_logits(ranker: Any, samples: RankSamples, task: str = "ctr", batch_size: int = 8192) -> np.ndarray:
    """(M,) the ranker's `task` logits of the samples (its own FID rows, the samples' dense block)."""
    if task not in getattr(ranker, "tasks_", ()):
        raise ConfigError(f"guardrail task {task!r}: the ranker has tasks {list(getattr(ranker, 'tasks_', ()))}")
    out = []
    with torch.inference_mode():
        for s in range(0, len(samples), batch_size):
            sl = slice(s, s + batch_size)
            b = ranker.batch(samples.users[sl], samples.items[sl], samples.X[sl])
            out.append(ranker.model_(b)[task].numpy())
    return np.concatenate(out) if out else np.empty(0, np.float32)


class AUCGuardrail:
    """Refuse a candidate whose held-out AUC is below the served one's minus `margin`."""

    def __init__(self, margin: float = 0.01, task: str | None = None, on_undefined: str = "refuse",
                 min_per_class: int = 10, group: str = "none") -> None:
        if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
            raise ConfigError(f"guardrail margin must be a number ≥ 0, got {margin!r}")
        if task is not None and (not isinstance(task, str) or not task):
            raise ConfigError(f"guardrail task must be the name of one of the ranker's tasks, got {task!r}")
        if on_undefined not in ("refuse", "accept"):
            raise ConfigError(f"guardrail on_undefined must be 'refuse' or 'accept', got {on_undefined!r}")
        if isinstance(min_per_class, bool) or not isinstance(min_per_class, int) or min_per_class < 1:
            raise ConfigError(f"guardrail min_per_class must be an integer ≥ 1, got {min_per_class!r}")
        if group not in GROUPS:
            raise ConfigError(f"guardrail group must be one of {', '.join(GROUPS)}, got {group!r}")
        self.group = group
        self.min_per_class = min_per_class
        self.margin = float(margin)
        self.task = task
        self.on_undefined = on_undefined

    def check(self, served: Any, candidate: Any, holdout: RankSamples, target: TaskTarget | None = None
              ) -> dict[str, float]:
        """The verdict {served_auc, candidate_auc, margin, n}; GuardrailRefused when refused.
        `target`: how the task is labelled (online/samples.py `task_targets`; default: without a
        label map, ctr ← any event, like ← like)."""
        task = self.task_of(served)
        if target is None:
            target = task_targets(None, (task,))[task]
        y = target.of(holdout.labels)[0]
        what_positive = f"a {task} positive ({' / '.join(c for c, _ in target.columns)})"
        users = None
        if self.group == "user":  # only the users with both classes are judged
            users = holdout.users
            pos_u = np.unique(users[y > 0.5])
            neg_u = np.unique(users[y <= 0.5])
            both = np.isin(users, np.intersect1d(pos_u, neg_u))
            y, users = y[both], users[both]
            holdout = RankSamples(holdout.users[both], holdout.items[both], holdout.X[both], holdout.recalled[both],
                                  holdout.ts[both], {k: v[both] for k, v in holdout.labels.items()},
                                  holdout.n_dropped)
        n_pos = int((y > 0.5).sum())
        if min(n_pos, len(y) - n_pos) < self.min_per_class:
            what = (f"guardrail: the held-out window has {len(y)} recalled samples, {n_pos} with "
                    f"{what_positive} — "
                    + ("AUC undefined" if n_pos in (0, len(y)) else
                       f"fewer than min_per_class={self.min_per_class} of a class, AUC too noisy to judge"))
            if self.on_undefined == "accept":
                log.warning("%s, the update is accepted unjudged (on_undefined=accept)", what)
                return {"served_auc": float("nan"), "candidate_auc": float("nan"), "margin": self.margin,
                        "n": float(len(y))}
            msg = f"{what}, the update is refused (widen the holdout window, or on_undefined=accept)"
            log.warning(msg)
            raise GuardrailRefused(msg)
        a_served = self._auc(y, ranker_logits(served, holdout, task), users)
        a_cand = self._auc(y, ranker_logits(candidate, holdout, task), users)
        verdict = {"served_auc": a_served, "candidate_auc": a_cand, "margin": self.margin, "n": float(len(y))}
        if a_cand < a_served - self.margin:
            msg = (f"guardrail: candidate {task} AUC {a_cand:.4f} < served AUC {a_served:.4f} − margin "
                   f"{self.margin:g} on {len(y)} held-out samples: refused")
            log.warning(msg)
            raise GuardrailRefused(msg)
        log.info("guardrail: candidate %s AUC %.4f vs served %.4f (margin %g, %d samples): accepted",
                 task, a_cand, a_served, self.margin, len(y))
        return verdict

    def task_of(self, ranker: Any) -> str:
        """The task judged: the one given, else the ranker's first (ctr where it has one; a shop
        log of carts and purchases alone has only conversion)."""
        if self.task is not None:
            return self.task
        tasks = tuple(getattr(ranker, "tasks_", ()) or ("ctr",))
        return "ctr" if "ctr" in tasks else tasks[0]

    @staticmethod
    def _auc(y: np.ndarray, scores: np.ndarray, users: np.ndarray | None) -> float:
        """AUC over all samples, or with `users` the per-user AUC averaged with each user weighted
        by its number of samples (GAUC), over the users with both classes (NaN: none has)."""
        if users is None:
            return auc(y, scores)
        order = np.argsort(users, kind="stable")
        u, y, scores = users[order], y[order], scores[order]
        cuts = np.flatnonzero(np.diff(u)) + 1
        total, weight = 0.0, 0
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(u)]):
            n_pos = int((y[a:b] > 0.5).sum())
            if 0 < n_pos < b - a:
                total += (b - a) * auc(y[a:b], scores[a:b])
                weight += b - a
        return total / weight if weight else float("nan")
