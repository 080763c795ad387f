"""The online learner (issue #10 item 4): `funnelrec learn`, a long-running process beside `serve`.

One step (`OnlineLearner.run_once`):

    events after the committed offset (online/source.py: event log or Redis Stream)
      → quarantine malformed events (unknown item, bad type, bad value)
      → label join (online/labels.py): impressions + later positives inside label_window_s
      → incremental co-occurrence / counter updates (itemCF, Swing, hot, fresh: `partial_fit`)
      → model updaters (`Updater.update`, below), each may refuse (GuardrailRefused)
      → publish a versioned artifact (online/publish.py) → CURRENT replaced atomically
      → commit offset + pending impressions + counters' progress in one SQLite transaction

The commit comes after the published version is durable, so a kill -9 at any point neither
skips nor double-counts an event (a restart redoes the step from the last committed offset,
starting from the published version that offset belongs to).

Interface for model updaters (the fine ranker FTRL/optimizer steps, two-tower, FID
admission/eviction live in online/updates.py and are passed in as `updaters=`):

    class Updater(Protocol):
        name: str
        def update(self, funnel: Funnel, samples: pl.DataFrame,
                   holdout: pl.DataFrame) -> dict[str, object]: ...

- `funnel`: the funnel as published by the previous step, with this step's count updates
  (itemCF/Swing/hot/fresh) already applied.
- `samples`: the labelled samples whose label window closed in this step, columns
  user_id, item_id, ts, request_id, click, like, watch_time, purchase (online/samples.py
  SAMPLE_COLUMNS; ids are the external string ids; organic positives have request_id null).
- `holdout`: the latest labelled window not trained on (the samples of the previous step's
  window are trained on now; `holdout` is the newest closed window, held out for the guardrail).
- returns {component name → new component} (e.g. {"ranker": new_ranker}); the learner calls
  `for u in updaters: parts |= u.update(funnel, samples, holdout)` and publishes the union
  (later updaters see `funnel.with_components(**parts)` of the earlier ones).
- raises `funnelrec.core.errors.GuardrailRefused` with the reason: that updater's parts are not
  published this step (logged and shown in the step report); the rest still are.
- `LearnConfig.min_count` / `LearnConfig.ttl_s` are handed to updaters that take them
  (FID admission/eviction) by the learner at construction: `u.configure(config)` if defined.
"""

from __future__ import annotations

from typing import Protocol

import polars as pl


class Updater(Protocol):
    """A model update of one step (module doc): returns new components or raises GuardrailRefused."""

    name: str

    def update(self, funnel: object, samples: pl.DataFrame, holdout: pl.DataFrame) -> dict[str, object]: ...
