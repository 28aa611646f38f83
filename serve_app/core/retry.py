"""What happens to a pipeline batch when a stage is slow, fails or loses its replica (no ray import).

The ingress sends each batch through the stages as one chain of calls (an `Attempt`); `run_batch` waits for
it under this policy:

- the chain answers within `stage_timeout_s`: its result;
- a stage raised because its replica died (killed, node lost, restarting: `FailureKind.REPLICA_LOST`): the
  whole chain is sent again - every stage is idempotent per batch - with a short backoff, until
  `replacement_wait_s` after the first loss; the platform routes the retry to a live replica, or queues it
  until a replacement is up. Past that: `unavailable`, naming the stage;
- no answer within `stage_timeout_s`, while some stage has no running replica (the platform holds the call
  for the replacement): keep waiting, up to `replacement_wait_s` from the start; otherwise, or after that:
  `timeout`, naming the first stage that has not answered;
- a stage whose deployment is not running at all (`FailureKind.UNDEPLOYED`): `unavailable` at once;
- any other exception: `error`, naming the stage (the caller logs the traceback).

The ingress maps these outcomes to 504 / 503 / 500. The Ray adapter (deployments/orchestrator.py) supplies
the attempt, the error classifier and the "which stages have no running replica" query; the unit tests
supply fakes.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger("ray.serve")


class FailureKind(enum.Enum):
    REPLICA_LOST = "replica_lost"   # retry: a replacement replica will take the batch
    UNDEPLOYED = "undeployed"       # the stage's deployment is not running: waiting will not help
    ERROR = "error"                 # the stage's own code failed


@dataclass(frozen=True)
class BatchPolicy:
    """How long a batch waits for the stages, and for a lost replica's replacement."""

    stage_timeout_s: float
    replacement_wait_s: float

    def replacement_deadline(self, since: float) -> float:
        """Until when a batch that met a lost replica at `since` keeps trying (clock seconds)."""
        return since + self.replacement_wait_s


@dataclass(frozen=True)
class BatchFailure:
    """Why a batch got no answer, and from which stage."""

    kind: str            # "timeout" | "unavailable" | "error"
    stage: str
    waited_s: float = 0.0
    error: BaseException | None = None


class Attempt(Protocol[T]):
    """One send of the batch through the chain of stages."""

    def result(self) -> Awaitable[T]:
        """The chain's final answer (raises what a stage raised)."""

    async def failed_stage(self, timeout_s: float) -> str:
        """The first stage of the chain that failed or has not answered."""

    def cancel(self) -> None:
        ...


def caused_by(error: BaseException | None, kinds: tuple[type, ...], depth: int = 8) -> bool:
    """Whether `error`, or what it wraps (__cause__ / __context__), is one of `kinds`."""
    seen = 0
    while error is not None and seen < depth:
        if isinstance(error, kinds):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


async def run_batch(start: Callable[[], Attempt[T]], policy: BatchPolicy, *,
                    classify: Callable[[BaseException], FailureKind],
                    stages_without_replica: Callable[[], Awaitable[list[str]]],
                    on_failure: Callable[[str, str], Any] = lambda stage, reason: None,
                    size: int = 0, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> T | BatchFailure:
    """Send the batch (`start()`) and wait for it under `policy`; the result, or a BatchFailure.
    `on_failure(stage, reason)` is called for every failure seen, retried ones included (for metrics);
    `size` is the batch's length, for the log."""
    started = clock()
    retry_until: float | None = None  # set when a stage lost its replica
    attempt_no = 0
    while True:
        attempt_no += 1
        attempt = start()
        timeout = policy.stage_timeout_s if retry_until is None else \
            max(policy.stage_timeout_s, retry_until - clock())
        pending = asyncio.ensure_future(attempt.result())
        try:
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done and retry_until is None and await stages_without_replica():
                # queued for a replica that is being replaced: wait for it, not for a timeout
                retry_until = policy.replacement_deadline(started)
                log.warning("a stage has no running replica; the batch of %d waits for its replacement", size)
                done, _ = await asyncio.wait({pending}, timeout=max(retry_until - clock(), 0))
            if not done:
                raise asyncio.TimeoutError
            return pending.result()
        except asyncio.TimeoutError:
            pending.cancel()
            attempt.cancel()
            if retry_until is not None:  # waited for a replacement too: report the whole wait
                timeout = round(clock() - started, 1)
            stage = await attempt.failed_stage(0.1)
            on_failure(stage, "timeout")
            return BatchFailure("timeout", stage, waited_s=timeout)
        except Exception as e:  # noqa: BLE001 - a stage raised: classify, name it
            stage = await attempt.failed_stage(1.0)
            on_failure(stage, type(e).__name__)
            kind = classify(e)
            if kind is FailureKind.UNDEPLOYED:
                log.error("stage %s unavailable: its deployment is not running", stage)
                return BatchFailure("unavailable", stage, error=e)
            if kind is FailureKind.REPLICA_LOST:
                now = clock()
                retry_until = retry_until or policy.replacement_deadline(now)
                if now < retry_until:
                    log.warning("stage %s lost its replica (%s); retrying the batch of %d (attempt %d)",
                                stage, type(e).__name__, size, attempt_no + 1)
                    await sleep(min(0.05 * 2 ** attempt_no, 1.0, max(retry_until - now, 0)))
                    continue
                log.error("stage %s unavailable after %d attempts: %s", stage, attempt_no, type(e).__name__)
                return BatchFailure("unavailable", stage, error=e)
            return BatchFailure("error", stage, error=e)
