"""Random-chunk model server for vla-eval 0.8.0, run in vla-eval's own virtualenv by
scripts/bench_libero_peer.py (benchmarking only; this project never imports it).

Returns an 8-step chunk of 7-D actions, uniform in [-1, 1] scaled by `scale`
(default 0.3).  Uses vla-eval's PredictModelServer: chunk_size=8 means one
predict call per 8 observations per session; the other 7 steps are served
from the server-side ActionChunkBuffer.  predict_batch is implemented so the
same class can run with max_batch_size > 1 (vla-eval's batching path);
predict() is inherited and delegates to predict_batch([obs], [ctx]).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from vla_eval.model_servers.base import SessionContext
from vla_eval.model_servers.predict import PredictModelServer
from vla_eval.specs import GRIPPER_CLOSE_POS, IMAGE_RGB, LANGUAGE, POSITION_DELTA, ROTATION_AA, DimSpec


class RandomChunkModelServer(PredictModelServer):
    def __init__(
        self,
        horizon: int = 8,
        action_dim: int = 7,
        scale: float = 0.3,
        seed: int = 0,
        *,
        chunk_size: int | None = 8,
        max_batch_size: int = 1,
        max_wait_time: float = 0.01,
    ) -> None:
        super().__init__(chunk_size=chunk_size, max_batch_size=max_batch_size, max_wait_time=max_wait_time)
        self.horizon = horizon
        self.action_dim = action_dim
        self.scale = scale
        self._rng = np.random.default_rng(seed)
        self.calls = 0
        self.batches = 0
        self.obs_count: dict[str, int] = {}

    async def on_observation(self, obs, ctx):  # type: ignore[override]
        # Count every observation (= every env step) per episode and check its image.
        img = obs["images"]["agentview"]
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8, (img.shape, img.dtype)
        self.obs_count[ctx.episode_id] = self.obs_count.get(ctx.episode_id, 0) + 1
        await super().on_observation(obs, ctx)

    def predict_batch(
        self, obs_batch: list[dict[str, Any]], ctx_batch: list[SessionContext]
    ) -> list[dict[str, Any]]:
        self.batches += 1
        out = []
        for obs in obs_batch:
            img = obs["images"]["agentview"]  # touch the decoded image so a missing one fails loudly
            assert img.shape == (256, 256, 3) and img.dtype == np.uint8, (img.shape, img.dtype)
            self.calls += 1
            chunk = self.scale * self._rng.uniform(-1.0, 1.0, size=(self.horizon, self.action_dim))
            out.append({"actions": chunk.astype(np.float32)})
        return out

    async def on_episode_end(self, result, ctx):  # type: ignore[override]
        import logging

        logging.getLogger("random_server").info(
            "episode end session=%s episode=%s client_steps=%s observations_received=%d predict_calls_total=%d batches_total=%d",
            ctx.session_id[:8],
            ctx.episode_id[:8],
            result.get("steps"),
            self.obs_count.get(ctx.episode_id, 0),
            self.calls,
            self.batches,
        )
        await super().on_episode_end(result, ctx)

    def get_action_spec(self) -> dict[str, DimSpec]:
        return {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS}

    def get_observation_spec(self) -> dict[str, DimSpec]:
        return {"agentview": IMAGE_RGB, "language": LANGUAGE}


if __name__ == "__main__":
    from vla_eval.model_servers.serve import run_server

    run_server(RandomChunkModelServer)
