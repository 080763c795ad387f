"""Dynamic batching of /recommend on the event loop (Triton's dynamic batcher, with no timer).

A request's handler hands its arguments to `RecommendBatcher.submit` and awaits the answer. The
first one to arrive schedules a drain a couple of loop turns later (`rounds`), so that every
request already read from the sockets — all of those that queued behind a running batch — has
reached `submit` too; the drain then answers up to `max_batch` of them with one
`RecommenderService.recommend_many` call, synchronously on the loop as a single request was
before (serving/app.py: no thread pool). Alone, a request waits two loop turns (µs); under load
the requests that waited behind a batch run as the next one, and a batch of 4 costs each request
~3.3 ms of CPU instead of 5.7 on the 1M-item bench funnel (docs/BENCHMARKS.md), so the server
gets faster exactly when it is busy. Each request gets the answer it would alone
(`recommend_many`) and its own error (a 4xx as before). A request whose handler was cancelled
(server shutdown) is skipped; one whose client has left is still computed (neither uvicorn nor
Starlette cancels a handler on disconnect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class RecommendBatcher:
    def __init__(self, max_batch: int = 8, rounds: int = 2, on_batch: Callable[[int], Any] | None = None) -> None:
        """`on_batch(n)` is told each drain's size (/metrics: funnelrec_recommend_batch_size)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        self.max_batch, self.rounds, self.on_batch = max_batch, rounds, on_batch
        self._queue: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._scheduled = False

    async def recommend(self, service: Any, kwargs: dict[str, Any], debug: bool = False,
                        explain: bool = False) -> Any:
        """`service.recommend(**kwargs, debug=…, explain=…)`: alone for debug and explain answers
        (or with max_batch 1), else batched with the requests waiting beside it (`submit`)."""
        if debug or explain or self.max_batch == 1:
            return service.recommend(**kwargs, debug=debug, explain=explain)
        return await self.submit(service, kwargs)

    async def submit(self, service: Any, kwargs: dict[str, Any]) -> Any:
        """`service.recommend(**kwargs)`, answered together with the requests waiting beside it."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.append((kwargs, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._tick, loop, service, 0)
        return await fut

    def _tick(self, loop: asyncio.AbstractEventLoop, service: Any, turn: int) -> None:
        if turn < self.rounds and len(self._queue) < self.max_batch:
            loop.call_soon(self._tick, loop, service, turn + 1)
            return
        batch = [(kw, fut) for kw, fut in self._queue[: self.max_batch] if not fut.done()]
        self._queue = self._queue[self.max_batch:]
        try:
            if batch:
                self._answer(service, batch)
        finally:
            # the next drain only now: the answers just set wake their handlers first, so they
            # are written before the next batch holds the loop (scheduled before, each batch's
            # answers waited for the next batch's whole computation)
            if self._queue:
                loop.call_soon(self._tick, loop, service, self.rounds)
            else:
                self._scheduled = False

    def _answer(self, service: Any, batch: list[tuple[dict[str, Any], asyncio.Future]]) -> None:
        """Every future of `batch` gets its answer or an exception, whatever happens: a handler
        left waiting would hold its in-flight slot for good."""
        answers: list[Any] = []
        try:
            if self.on_batch is not None:
                self.on_batch(len(batch))
            answers = list(service.recommend_many([kw for kw, _ in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"recommend_many answered {len(answers)} of {len(batch)} requests")
        except Exception as e:  # noqa: BLE001 - every waiting request gets it
            answers = [e] * len(batch)
        finally:
            for i, (_, fut) in enumerate(batch):
                if fut.done():
                    continue
                a = answers[i] if i < len(answers) else RuntimeError("the batch was interrupted")
                if isinstance(a, BaseException):
                    fut.set_exception(a)
                else:
                    fut.set_result(a)
