"""The same stage code in one uvicorn process, no Ray: what a user would pick instead on one machine.

`uvicorn bench.plain_app:app` (env as for `make run`: SIGNAL_DB_PATH / MYSQL_*, MODEL_DIR). Candles and
news refresh on a background thread and signals are written behind in batches, as in the Ray graph."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from serve_app.training.registry import resolve
from serve_app.core.model import SignalModel
from serve_app.core.pipeline import LocalPipeline
from serve_app.api.schemas import SignalRequest, http_result
from serve_app.core.records import SignalInput
from serve_app.store import StoreError, open_store

REFRESH_S = 30.0
FLUSH_S = 0.5

pipeline = LocalPipeline(open_store, SignalModel.load(resolve("current")))
pipeline.refresh()
_store_lock = threading.Lock()
pending_rows: list[dict] = []
_writer_store = open_store()


def _background() -> None:
    stop = threading.Event()
    ticks = 0
    while not stop.wait(FLUSH_S):
        ticks += 1
        records, pending_rows[:] = list(pending_rows), []
        if records:
            try:
                with _store_lock:
                    _writer_store.insert_signals(records)
            except StoreError:
                pending_rows[:0] = records  # keep them for the next flush
        if ticks * FLUSH_S >= REFRESH_S:
            ticks = 0
            pipeline.refresh()


threading.Thread(target=_background, daemon=True).start()
app = FastAPI(title="signalgen in one process (benchmark)")


@app.post("/generate_signal")
def generate_signal(req: SignalRequest) -> JSONResponse:
    asof = req.timestamp or datetime.now(timezone.utc)
    (result,) = pipeline.run([SignalInput(req.symbol, req.price, int(asof.timestamp() * 1000), req.equity)])
    status, body = http_result(result)
    if status == 200:
        pending_rows.append(result.row(body))  # written behind, as Analytics does
    return JSONResponse(body, status_code=status)
