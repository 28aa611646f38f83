"""No-op Serve apps for the benchmark floors (`make bench`).

- `app`: a FastAPI ingress that validates the same request model and returns a constant body: the floor
  Ray Serve's HTTP path sets.
- `chain_app`: the same ingress, then `hops` sequential handle calls to a no-op deployment, one batch
  each: what the graph's critical path (features → ML → portfolio → risk) costs in Ray hops alone.
"""
from fastapi import FastAPI
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.schemas import SignalRequest

api = FastAPI(title="no-op ingress (benchmark floor)")


@serve.deployment
@serve.ingress(api)
class NoopIngress:
    @api.post("/generate_signal")
    async def generate_signal(self, req: SignalRequest) -> dict:
        return {"symbol": req.symbol, "price": req.price, "action": "HOLD"}


app = NoopIngress.bind()

chain_api = FastAPI(title="no-op ingress + chain of no-op stages (benchmark floor)")


@serve.deployment
class NoopStage:
    async def echo(self, items: list[dict]) -> list[dict]:
        return items


@serve.deployment
@serve.ingress(chain_api)
class NoopChainIngress:
    def __init__(self, stage: DeploymentHandle, hops: int):
        self.stage, self.hops = stage, hops

    @chain_api.post("/generate_signal")
    async def generate_signal(self, req: SignalRequest) -> dict:
        items = [{"symbol": req.symbol, "price": req.price}]
        resp = None
        for _ in range(self.hops):  # each call waits for the previous one, as the graph's stages do
            resp = self.stage.echo.remote(resp if resp is not None else items)
        out = await resp if resp is not None else items
        return {"symbol": out[0]["symbol"], "price": out[0]["price"], "action": "HOLD"}


class ChainArgs(BaseModel):
    hops: int = Field(4, ge=0, le=16)


def chain_app(args: dict | None = None):
    a = ChainArgs.model_validate(args or {})
    return NoopChainIngress.bind(NoopStage.bind(), a.hops)
