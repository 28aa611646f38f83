"""Orchestrator deployment: the FastAPI ingress. Validates, groups concurrent requests into one pipeline
batch (an adaptive batcher: no wait when idle, bigger batches under load), fans out to the stages with
one handle call per stage per batch, fans in. What happens when a stage is slow or loses its replica is
core/retry.py's policy; this module only supplies Ray's side of it."""

import asyncio
import logging
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Awaitable

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.guard import install_guards
from serve_app.api.schemas import ErrorBody, SignalRequest, SignalResponse, http_result
from serve_app.core.batcher import AdaptiveBatcher
from serve_app.core.pipeline import finish_batch
from serve_app.core.records import Signal, SignalInput
from serve_app.core.retry import BatchFailure, BatchPolicy, FailureKind, caused_by, run_batch
from serve_app.deployments.base import StageBase
from serve_app.deployments.metrics import merge_exposition

log = logging.getLogger("ray.serve")

api = FastAPI(
    title="Crypto signal service",
    version="0.1.0",
    description="Trading signals (BUY/SELL/HOLD) from seven Ray Serve deployments: features, market context, "
                "XGBoost, portfolio sizing, risk checks and analytics.",
)
install_guards(api)  # API key, body limit, content type, strict JSON, no stack traces


class _ChainAttempt:
    """One send of a batch through the stage handles (core/retry.py's Attempt)."""

    def __init__(self, chain: list[tuple[str, Any]]):
        self.chain = chain

    def result(self) -> Awaitable[Any]:
        async def last() -> Any:
            return await self.chain[-1][1]
        return last()

    async def failed_stage(self, timeout_s: float) -> str:
        """The first stage of the chain that failed or has not answered. Each response gets at least
        0.1 s: re-reading one that already finished takes a round trip (timeout 0 would blame the first)."""
        for name, resp in self.chain:
            try:
                await asyncio.wait_for(resp, timeout=max(timeout_s, 0.1))
            except BaseException:  # noqa: BLE001 - the first stage that failed or did not finish
                return name
        return "orchestrator"

    def cancel(self) -> None:
        self.chain[-1][1].cancel()


def _classify(error: BaseException) -> FailureKind:
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    if caused_by(error, (DeploymentUnavailableError,)):
        return FailureKind.UNDEPLOYED
    if caused_by(error, (RayActorError, ReplicaUnavailableError)):
        return FailureKind.REPLICA_LOST
    return FailureKind.ERROR


def _failure_answer(failure: BatchFailure, not_recorded: bool = False) -> tuple[int, dict]:
    # a signal that could not be recorded is withheld: the client gets no signal it cannot find again
    prefix = "signal withheld: it could not be recorded; " if not_recorded else ""
    if failure.kind == "timeout":
        return 504, {"detail": f"{prefix}signal pipeline timed out after {failure.waited_s:g} s "
                               f"waiting for stage '{failure.stage}'"}
    if failure.kind == "unavailable":
        return 503, {"detail": f"{prefix}stage '{failure.stage}' is unavailable"}
    log.error("pipeline failed in stage %s", failure.stage, exc_info=failure.error)
    return 500, {"detail": f"{prefix}internal error in stage '{failure.stage}'"}


@serve.deployment
@serve.ingress(api)
class Orchestrator(StageBase):
    stage = "orchestrator"

    def __init__(self, features: DeploymentHandle, market: DeploymentHandle, ml: DeploymentHandle,
                 portfolio: DeploymentHandle, risk: DeploymentHandle, analytics: DeploymentHandle, *,
                 timeframe: str, max_batch_size: int, max_in_flight: int, stage_timeout_s: float,
                 replacement_wait_s: float):
        self._init_stage()
        self.stages = {"features": features, "market_context": market, "ml": ml, "portfolio": portfolio,
                       "risk": risk, "analytics": analytics}
        self.features, self.market, self.ml = features, market, ml
        self.portfolio, self.risk, self.analytics = portfolio, risk, analytics
        self.timeframe = timeframe
        self.policy = BatchPolicy(stage_timeout_s=stage_timeout_s, replacement_wait_s=replacement_wait_s)
        self.batcher = AdaptiveBatcher(self.pipeline, max_batch_size=max_batch_size, max_in_flight=max_in_flight)
        # answers the endpoints never see (guard rejections, validation 422s) are counted too
        api.state.count_response = lambda route, status: self.metrics.inc(
            "signalgen_requests_total", route=route, status=str(status))

    # ---------------------------------------------------------------- signal
    @api.post("/generate_signal", response_model=SignalResponse,
              responses={404: {"model": ErrorBody, "description": "Unknown symbol (no candles)"},
                         422: {"description": "Invalid body; the message names the field"},
                         500: {"model": ErrorBody, "description": "A stage failed; names it"},
                         503: {"model": ErrorBody, "description": "Market data store unreachable, or a stage "
                                                                  "unavailable; a signal that could not be "
                                                                  "recorded is withheld (503/504/500)"},
                         504: {"model": ErrorBody, "description": "A stage did not answer in time"}})
    async def generate_signal(self, req: SignalRequest) -> Response:
        t0 = time.perf_counter()
        asof = req.timestamp or datetime.now(timezone.utc)
        if asof.tzinfo is None:
            asof = asof.replace(tzinfo=timezone.utc)
        item = SignalInput(symbol=req.symbol, price=req.price, asof_ms=int(asof.timestamp() * 1000),
                           equity=req.equity)
        status, body = await self.batcher.submit(item)
        self.metrics.observe("signalgen_request_latency_seconds", time.perf_counter() - t0)
        return JSONResponse(body, status_code=status)

    async def pipeline(self, items: list[SignalInput]) -> list[tuple[int, dict]]:
        """One batch (requests grouped by the adaptive batcher) through every stage; metrics are counted
        once per batch, not per request."""
        self.metrics.observe("signalgen_pipeline_batch_size", len(items))
        self.metrics.inc("signalgen_pipeline_batches_total")
        results = await self._run_stages(items)
        for status, n in Counter(status for status, _ in results).items():
            self.metrics.inc("signalgen_requests_total", n, route="/generate_signal", status=str(status))
        return results

    async def _run_stages(self, items: list[SignalInput]) -> list[tuple[int, dict]]:
        """features ∥ market context → ML → portfolio → risk, then Analytics makes the signals durable;
        each step under core/retry.py's policy. DeploymentResponses are passed straight into the next handle
        call, so the stages cost one await. A signal is answered only once Analytics has acknowledged it
        durable (stored, or journaled to disk): when the ingress replica dies, nothing it answered is lost."""
        def stages() -> _ChainAttempt:
            f = self.features.compute.remote(items)
            c = self.market.context.remote(items)
            p = self.ml.predict.remote(f)
            s = self.portfolio.size.remote(p, c)
            r = self.risk.assess.remote(s)
            return _ChainAttempt([("features", f), ("market_context", c), ("ml", p), ("portfolio", s),
                                  ("risk", r)])

        out = await self._under_policy(stages, len(items))
        if isinstance(out, BatchFailure):
            return [_failure_answer(out)] * len(items)
        finished = finish_batch(out, self.timeframe)
        answers = [http_result(r) for r in finished]
        signals = [(i, r, answers[i][1]) for i, r in enumerate(finished) if isinstance(r, Signal)]
        if not signals:
            return answers
        rows = [r.row(body) for _, r, body in signals]
        recorded = await self._under_policy(
            lambda: _ChainAttempt([("analytics", self.analytics.record.remote(rows))]), len(rows))
        if isinstance(recorded, BatchFailure):  # not durable: never answer it as a signal
            for i, _, _ in signals:
                answers[i] = _failure_answer(recorded, not_recorded=True)
            return answers
        for (symbol, action), n in Counter((r.work.input.symbol, body["action"]) for _, r, body in signals).items():
            self.metrics.inc("signalgen_signals_total", n, symbol=symbol, action=action)
        return answers

    def _under_policy(self, start: Any, size: int) -> Awaitable[Any]:
        return run_batch(start, self.policy, classify=_classify, size=size,
                         stages_without_replica=self._stages_without_replica,
                         on_failure=lambda stage, reason: self.metrics.inc(
                             "signalgen_stage_failures_total", stage=stage, reason=reason))

    async def _deployment_statuses(self) -> dict[str, Any] | None:
        """This application's deployments (status, message, replica states) from the Serve controller;
        None when it does not answer within 5 s."""
        def read() -> dict[str, Any]:
            return dict(serve.status().applications[serve.get_replica_context().app_name].deployments)
        try:
            return await asyncio.wait_for(asyncio.to_thread(read), timeout=5.0)
        except Exception:  # noqa: BLE001 - the controller's view is a hint; callers decide without it
            return None

    async def _stages_without_replica(self) -> list[str]:
        """The stages of this application that have no RUNNING replica now (the controller is starting a
        replacement); [] when the controller cannot tell."""
        deployments = await self._deployment_statuses() or {}
        return [name for name, handle in self.stages.items() if handle.deployment_name in deployments
                and not any(getattr(state, "value", state) == "RUNNING" and n > 0
                            for state, n in deployments[handle.deployment_name].replica_states.items())]

    # ---------------------------------------------------------------- health, metrics, analytics
    @api.get("/health")
    async def health(self) -> JSONResponse:
        async def one(name: str, handle: DeploymentHandle) -> dict:
            try:
                return await asyncio.wait_for(handle.health.remote(), timeout=5.0)
            except Exception as e:
                reasons = [f"{name} did not answer: {type(e).__name__}"]
                dep = (await self._deployment_statuses() or {}).get(handle.deployment_name)
                if dep is not None:  # why Serve cannot run it, e.g. the constructor's error naming a model file
                    message = " ".join(str(dep.message or "").split())
                    state = getattr(dep.status, "value", dep.status)
                    reasons.append(f"{name} deployment {state}: {message[-1500:]}" if message
                                   else f"{name} deployment {state}")
                return {"ok": False, "reasons": reasons}

        names = list(self.stages)
        reports = await asyncio.gather(*(one(n, self.stages[n]) for n in names))
        stages = dict(zip(names, reports))
        stages["orchestrator"] = {"ok": True, "reasons": []}
        reasons = [f"{n}: {r}" for n, rep in stages.items() for r in rep.get("reasons", [])]
        ok = all(rep.get("ok") for rep in stages.values())
        warnings = [f"{n}: {w}" for n, rep in stages.items() for w in rep.get("warnings", [])]
        body = {"status": "ok" if ok else "unavailable", "reasons": reasons, "warnings": warnings, "stages": stages}
        self.metrics.inc("signalgen_requests_total", route="/health", status="200" if ok else "503")
        return JSONResponse(body, status_code=200 if ok else 503)

    @api.get("/metrics")
    async def metrics_endpoint(self) -> Response:
        names = list(self.stages)

        async def one(handle: DeploymentHandle) -> list:
            try:
                return await asyncio.wait_for(handle.metrics_families.remote(), timeout=5.0)
            except Exception:
                return []

        fams = await asyncio.gather(*(one(self.stages[n]) for n in names))
        text = merge_exposition([("orchestrator", self.metrics_families()), *zip(names, fams)])
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @api.get("/analytics/performance")
    async def performance(self, since: datetime | None = Query(None, description="only signals after this")) -> JSONResponse:
        since_ms = int(since.timestamp() * 1000) if since else None
        try:
            return JSONResponse(await self.analytics.performance.remote(since_ms))
        except Exception as e:
            return JSONResponse({"detail": f"analytics unavailable: {type(e).__name__}"}, status_code=503)

    def check_health(self) -> None:
        pass  # the ingress holds no resource of its own; /health reports the stages
