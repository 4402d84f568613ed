"""ServerState: what the route handlers share (one per server)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tenk.server.args import ServerArgs
from tenk.server.engine_client import EngineClient
from tenk.server.errors import APIError
from tenk.server.metrics import ServerMetrics
from tenk.server.tokenization import TokenizerWrapper


@dataclass(slots=True)
class ServerState:
    args: ServerArgs
    client: EngineClient
    tokenizer: TokenizerWrapper
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_name(self) -> str:
        return self.args.model_names[0]

    @property
    def max_model_len(self) -> int:
        return self.client.ready.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.client.ready.vocab_size

    def check_model(self, name: str | None) -> str:
        """The name to answer with; 404 in OpenAI's shape for a model this server does not serve."""
        if name is None or name in self.args.model_names:
            return name or self.model_name
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")

    def check_engine(self) -> None:
        if not self.client.alive:
            raise APIError(503, self.client.dead_reason or "The server is shutting down.", code="engine_unavailable")

    def health(self) -> dict:
        """Each replica's state, for /health."""
        links = self.client.links
        up = sum(1 for link in links if link.up)
        status = "ok" if up == len(links) else "degraded" if up else "unavailable"
        return {"status": status, "replicas_up": up, "replicas": [link.describe() for link in links]}

    def check_token_ids(self, ids: list[int], param: str) -> None:
        vocab = self.vocab_size
        for t in ids:
            if t >= vocab:
                raise APIError(400, f"Token id {t} is outside the vocabulary (ids are 0..{vocab - 1}).", param)
