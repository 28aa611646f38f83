"""The batch policy (core/retry.py) driven by fake stage calls: no Ray. Each fake attempt is a scripted
chain of stages; the policy's decisions (retry, wait, give up, name the stage) are checked, not durations.
The replica-kill integration tests (tests/integration/test_replica_faults.py) run the same policy on Ray."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.core.retry import BatchFailure, BatchPolicy, FailureKind, caused_by, run_batch


class ReplicaDied(Exception):
    pass


class NotDeployed(Exception):
    pass


def classify(e: BaseException) -> FailureKind:
    if caused_by(e, (NotDeployed,)):
        return FailureKind.UNDEPLOYED
    if caused_by(e, (ReplicaDied,)):
        return FailureKind.REPLICA_LOST
    return FailureKind.ERROR


class FakeAttempt:
    """A chain whose stage `stage` does `behaviour`: ("ok", value) | ("raise", exc) | ("hang", None) |
    ("late", (seconds, value))."""

    def __init__(self, stage: str, behaviour: tuple[str, Any]):
        self.stage, self.behaviour = stage, behaviour
        self.cancelled = False

    async def _run(self) -> Any:
        kind, arg = self.behaviour
        if kind == "ok":
            return arg
        if kind == "raise":
            raise arg
        if kind == "late":
            await asyncio.sleep(arg[0])
            return arg[1]
        await asyncio.Event().wait()  # hang until cancelled

    def result(self):
        return self._run()

    async def failed_stage(self, timeout_s: float) -> str:
        return self.stage

    def cancel(self) -> None:
        self.cancelled = True


class Script:
    """Hands out the scripted attempts in order and records every call the policy makes."""

    def __init__(self, *attempts: FakeAttempt, without_replica: list[list[str]] | None = None):
        self.attempts = list(attempts)
        self.started: list[FakeAttempt] = []
        self.failures: list[tuple[str, str]] = []
        self.sleeps: list[float] = []
        self.without_replica = list(without_replica or [])
        self.replica_queries = 0

    def start(self) -> FakeAttempt:
        a = self.attempts[min(len(self.started), len(self.attempts) - 1)]
        self.started.append(a)
        return a

    async def stages_without_replica(self) -> list[str]:
        self.replica_queries += 1
        return self.without_replica.pop(0) if self.without_replica else []

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)

    def run(self, policy: BatchPolicy, clock=None) -> Any:
        kw = {"clock": clock} if clock else {}
        return asyncio.run(run_batch(self.start, policy, classify=classify,
                                     stages_without_replica=self.stages_without_replica,
                                     on_failure=lambda stage, reason: self.failures.append((stage, reason)),
                                     size=3, sleep=self.sleep, **kw))


POLICY = BatchPolicy(stage_timeout_s=0.5, replacement_wait_s=20.0)


def test_answer_passes_through() -> None:
    s = Script(FakeAttempt("risk", ("ok", ["a", "b", "c"])))
    assert s.run(POLICY) == ["a", "b", "c"]
    assert len(s.started) == 1 and s.failures == [] and s.replica_queries == 0


def test_replica_lost_then_replaced_retries_until_it_answers() -> None:
    lost = FakeAttempt("ml", ("raise", RuntimeError("wrapped")))
    lost.behaviour[1].__cause__ = ReplicaDied("actor died")     # the platform wraps the real cause
    s = Script(lost, lost, FakeAttempt("risk", ("ok", "answer")))
    assert s.run(POLICY) == "answer"
    assert len(s.started) == 3
    assert s.failures == [("ml", "RuntimeError"), ("ml", "RuntimeError")]  # every loss is counted
    assert len(s.sleeps) == 2 and all(0 < x <= 1.0 for x in s.sleeps) and s.sleeps[0] < s.sleeps[1]


def test_replica_lost_past_the_wait_is_unavailable_naming_the_stage() -> None:
    t = [0.0]

    def clock() -> float:
        t[0] += 6.0            # every look at the clock: 6 s later (the replacement never comes)
        return t[0]

    s = Script(FakeAttempt("portfolio", ("raise", ReplicaDied("gone"))))
    out = s.run(BatchPolicy(stage_timeout_s=0.5, replacement_wait_s=20.0), clock=clock)
    assert isinstance(out, BatchFailure) and out.kind == "unavailable" and out.stage == "portfolio"
    assert isinstance(out.error, ReplicaDied)
    assert 2 <= len(s.started) <= 4          # retried while within the wait, then gave up
    assert all(f == ("portfolio", "ReplicaDied") for f in s.failures)


def test_timeout_with_every_replica_running_names_the_stage() -> None:
    hung = FakeAttempt("features", ("hang", None))
    s = Script(hung, without_replica=[[]])
    out = s.run(BatchPolicy(stage_timeout_s=0.05, replacement_wait_s=20.0))
    assert isinstance(out, BatchFailure) and out.kind == "timeout" and out.stage == "features"
    assert out.waited_s == 0.05 and hung.cancelled
    assert s.failures == [("features", "timeout")] and len(s.started) == 1


def test_timeout_while_a_replica_is_replaced_keeps_waiting_for_it() -> None:
    slow = FakeAttempt("market_context", ("late", (0.3, "answer")))
    s = Script(slow, without_replica=[["market_context"]])
    assert s.run(BatchPolicy(stage_timeout_s=0.05, replacement_wait_s=20.0)) == "answer"
    assert s.replica_queries == 1 and s.failures == [] and not slow.cancelled


def test_timeout_while_replaced_gives_up_after_the_wait() -> None:
    hung = FakeAttempt("ml", ("hang", None))
    s = Script(hung, without_replica=[["ml"]])
    out = s.run(BatchPolicy(stage_timeout_s=0.05, replacement_wait_s=0.2))
    assert isinstance(out, BatchFailure) and out.kind == "timeout" and out.stage == "ml"
    assert out.waited_s >= 0.2 and hung.cancelled        # the whole wait is reported, not stage_timeout_s
    assert s.failures == [("ml", "timeout")]


def test_stage_exception_is_an_error_at_once() -> None:
    boom = ValueError("bad input to risk")
    s = Script(FakeAttempt("risk", ("raise", boom)))
    out = s.run(POLICY)
    assert isinstance(out, BatchFailure) and out.kind == "error" and out.stage == "risk" and out.error is boom
    assert len(s.started) == 1 and s.sleeps == [] and s.failures == [("risk", "ValueError")]


def test_undeployed_stage_is_unavailable_at_once() -> None:
    s = Script(FakeAttempt("analytics", ("raise", NotDeployed("DEPLOY_FAILED"))))
    out = s.run(POLICY)
    assert isinstance(out, BatchFailure) and out.kind == "unavailable" and out.stage == "analytics"
    assert len(s.started) == 1 and s.sleeps == []


@pytest.mark.parametrize("depth, found", [(0, True), (3, True), (9, False)])
def test_caused_by_walks_the_chain(depth: int, found: bool) -> None:
    err: BaseException = ReplicaDied("root")
    for i in range(depth):
        outer = RuntimeError(f"layer {i}")
        outer.__cause__ = err
        err = outer
    assert caused_by(err, (ReplicaDied,)) is found
