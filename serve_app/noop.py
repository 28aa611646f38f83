"""A no-op Serve FastAPI ingress: the floor Ray Serve's HTTP path sets (used by `make bench`).

It validates the same request model and returns a constant body, with no handle call behind it."""
from fastapi import FastAPI
from ray import serve

from serve_app.schemas import SignalRequest

api = FastAPI(title="no-op ingress (benchmark floor)")


@serve.deployment
@serve.ingress(api)
class NoopIngress:
    @api.post("/generate_signal")
    async def generate_signal(self, req: SignalRequest) -> dict:
        return {"symbol": req.symbol, "price": req.price, "action": "HOLD"}


app = NoopIngress.bind()
