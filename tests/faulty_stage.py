"""Test-only application: the real graph with a RiskManager that fails on purpose for chosen symbols.

import_path `tests.faulty_stage:build_faulty_app` (the same args as `serve_app.app:build_app`). Nothing here
is imported by the service: production code has no fault hook. The subclass keeps the deployment name
`RiskManager`, so the serve config's options for it apply unchanged.

    ETH  → assess raises RuntimeError (a stage that raises → 500 naming 'risk')
    BTC  → assess sleeps SLOW_S seconds (longer than the proxy's request_timeout_s → 408/504)
    else → the real risk checks
"""
from __future__ import annotations

import asyncio
from unittest import mock

from ray import serve

import serve_app.app as app_module
from serve_app.config import AppArgs
from serve_app.core.records import Work
from serve_app.deployments.risk_manager import RiskManager

RAISE_SYMBOL = "ETH"
SLOW_SYMBOL = "BTC"
SLOW_S = 45.0


class _FaultyRisk(RiskManager.func_or_class):
    async def assess(self, items: list[Work]) -> list[Work]:
        symbols = {w.input.symbol for w in items}
        if RAISE_SYMBOL in symbols:
            with self.timed():
                raise RuntimeError(f"injected fault for {RAISE_SYMBOL}")
        if SLOW_SYMBOL in symbols:
            await asyncio.sleep(SLOW_S)
        return await super().assess(items)


FaultyRisk = serve.deployment(name="RiskManager")(_FaultyRisk)


def build_faulty_app(args: AppArgs | dict | None = None):
    with mock.patch.object(app_module, "RiskManager", FaultyRisk):
        return app_module.build_app(args)
