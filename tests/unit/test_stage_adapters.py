"""The ray-free functions the deployments call: feature results from the candle cache, the cache's
incremental refresh, portfolio/risk batch adapters and the response builder (Signal.response)."""
from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.cache import CandleCache
from serve_app.core.features import FEATURE_NAMES, WARMUP, compute_features
from serve_app.core.trading import ExposureBook, PortfolioConfig, RiskConfig, TradeConfig
from serve_app.core.pipeline import assess_batch, feature_result, size_batch
from serve_app.core.records import (CandleFacts, ErrorCode, MarketView, Prediction, Signal, SignalInput, StageError,
                                    Work)
from serve_app.store import StoreUnavailable
from serve_app.data.sample import sample_candles
from serve_app.store.sqlite_store import SQLiteStore

H = 3_600_000
END = 1_800_000_000_000 // H * H


@pytest.fixture()
def store(tmp_path):
    s = SQLiteStore(tmp_path / "t.sqlite")
    s.migrate()
    for sym in ("BTC", "SOL"):
        c = sample_candles(sym, n=400, end_ms=END)
        s.upsert_candles(sym, "1h", c.to_rows())
    s.upsert_candles("NEW", "1h", sample_candles("ETH", n=50, end_ms=END).to_rows())
    yield s
    s.close()


def test_feature_result_matches_training_row_and_carries_atr(store):
    cache = CandleCache(lambda: store, "1h", window=300)
    assert cache.refresh()
    candles = store.load_candles("SOL", "1h")
    res = feature_result(cache, SignalInput("SOL", float(candles.close[-1]), END))
    assert res.ok and res.candle.last_close == candles.close[-1]
    row = compute_features(candles.open, candles.high, candles.low, candles.close, candles.volume)[-1]
    np.testing.assert_allclose(res.features, row, rtol=1e-9)
    assert res.candle.atr_pct == pytest.approx(row[FEATURE_NAMES.index("atr_pct_14")])
    assert res.candle.atr == pytest.approx(res.candle.atr_pct * candles.close[-1])
    assert res.candle.last_open_time_ms == END


def test_feature_result_errors(store, tmp_path):
    cache = CandleCache(lambda: store, "1h", window=300)
    cache.refresh()
    assert feature_result(cache, SignalInput("XRP", 1.0, END)).error.code == "unknown_symbol"
    short = feature_result(cache, SignalInput("NEW", 1.0, END)).error
    assert short.code == "insufficient_history" and str(WARMUP + 1) in short.message

    def down():
        raise StoreUnavailable("cannot reach mysql at db:3306")

    empty = CandleCache(down, "1h", window=300)
    assert not empty.refresh()
    res = feature_result(empty, SignalInput("SOL", 100.0, END)).error
    assert res.code == "store_unavailable" and "db:3306" in res.message


def test_cache_refresh_is_incremental_and_updates_the_current_bar(store):
    calls = []
    cache = CandleCache(lambda: store, "1h", window=300, on_query=lambda op, s, failed: calls.append((op, failed)))
    cache.refresh()
    assert len(cache.data["SOL"]) == 300 and calls == [("refresh_candles", False)]
    # the current bar changes and a new one arrives
    last = cache.data["SOL"].open_time[-1]
    store.upsert_candles("SOL", "1h", [(int(last), 1, 2, 0.5, 1.5, 10), (int(last) + H, 1.5, 2, 1, 1.8, 11)])
    cache.refresh()
    sol = cache.data["SOL"]
    assert len(sol) == 300 and sol.open_time[-1] == last + H and sol.close[-1] == 1.8 and sol.close[-2] == 1.5
    assert np.all(np.diff(sol.open_time) == H)


def _pipeline_item(action="BUY", probs=(0.1, 0.2, 0.7)):
    return Work(SignalInput("SOL", 100.0, END + 600_000, None),
                candle=CandleFacts(last_close=100.2, last_open_time_ms=END, atr=1.5, atr_pct=0.015,
                                   candles_cached=300, cache_age_s=1.0, store_reachable=True),
                prediction=Prediction(probs, action, max(probs), "v1"))


def test_portfolio_risk_and_response_end_to_end():
    ctx = MarketView(sentiment=0.1, market_sentiment=0.0, momentum=0.01, breadth=0.5, regime="trending", news_count=2)
    failed = Work(SignalInput("SOL", 100.0, END)).failed(StageError("x", "x"))
    items = size_batch([_pipeline_item(), _pipeline_item("HOLD", (0.2, 0.6, 0.2)), failed],
                       [ctx, ctx, ctx], TradeConfig(), PortfolioConfig(equity=50_000))
    assert items[0].sizing.equity == 50_000 and items[0].sizing.notional > 0 and items[1].sizing.notional == 0
    items = assess_batch(items, TradeConfig(), RiskConfig(), ExposureBook(3600))
    assert items[2] is failed  # failed items pass through untouched
    buy = Signal("id", "1h", END + 601_000, items[0]).response()
    assert buy["action"] == "BUY" and buy["risk"]["approved"]
    assert buy["risk"]["stop_loss"] == pytest.approx(97.0) and buy["risk"]["take_profit"] == pytest.approx(104.5)
    assert buy["position"]["notional"] == pytest.approx(items[0].sizing.notional)
    assert buy["market_context"] == {"sentiment": 0.1, "market_sentiment": 0.0, "momentum": 0.01, "breadth": 0.5,
                                     "regime": "trending", "news_count": 2}
    hold = Signal("id", "1h", END + 601_000, items[1]).response()
    assert hold["position"]["size"] == 0 and hold["risk"]["stop_loss"] is None


def test_market_failure_marks_item_failed():
    items = size_batch([_pipeline_item()], [StageError(ErrorCode.STORE_UNAVAILABLE, "down")],
                       TradeConfig(), PortfolioConfig())
    assert items[0].ok is False and items[0].error.code == "store_unavailable"


def test_batch_features_equal_one_by_one_and_keep_errors_in_place(store):
    from serve_app.core.pipeline import compute_features_batch

    cache = CandleCache(lambda: store, "1h", window=300)
    cache.refresh()
    reqs = [SignalInput("SOL", 101.0, END), SignalInput("XRP", 1.0, END), SignalInput("BTC", 49_000.0, END),
            SignalInput("NEW", 3000.0, END), SignalInput("SOL", 99.5, END)]
    batch = compute_features_batch(cache, reqs)
    assert [b.input.symbol for b in batch] == [r.symbol for r in reqs]
    assert [b.error and b.error.code for b in batch] == [None, "unknown_symbol", None, "insufficient_history", None]
    for r, b in zip(reqs, batch):
        if b.ok:
            one = feature_result(cache, r)
            np.testing.assert_allclose(b.features, one.features, rtol=1e-12)
            assert b.candle.atr == pytest.approx(one.candle.atr) and b.input.price == r.price


def test_refresh_market_keeps_the_last_snapshot_when_news_fails(store):
    from serve_app.core.market import MarketConfig
    from serve_app.core.pipeline import refresh_market

    calls = []
    cache = CandleCache(lambda: store, "1h", window=300)
    snap, err = refresh_market(cache, MarketConfig(), None, on_query=lambda op, s, failed: calls.append((op, failed)))
    assert err is None and snap is not None and set(snap.series) == {"BTC", "SOL", "NEW"}
    assert ("load_news", False) in calls

    def no_news(since_ms, symbols=None):
        raise StoreUnavailable("news table unreachable")

    store.load_news = no_news
    again, err = refresh_market(cache, MarketConfig(), snap)
    assert again is snap and "news table unreachable" in err
    fresh, err = refresh_market(cache, MarketConfig(), None)  # nothing to keep: candles without news
    assert fresh is not None and fresh.all_news_score.size == 0 and err
