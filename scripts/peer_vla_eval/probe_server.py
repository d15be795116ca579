"""vla-eval 0.8.0 model server around `probe_policy.probe_chunk`, served in-process by
scripts/check_libero_pro_peer.py (`vla_eval.api.serve_background`).

vla-eval's PredictModelServer with chunk_size=8 buffers each chunk and answers one action per
observation, asking `predict` again when the buffer runs dry: 8 actions per chunk, as our harness
executes the policy's whole 8-step chunk. The benchmark must send the state (`send_state: true`).
"""

from __future__ import annotations

from typing import Any

from probe_policy import CHUNK, probe_chunk
from vla_eval.model_servers.predict import PredictModelServer
from vla_eval.specs import GRIPPER_CLOSE_POS, IMAGE_RGB, LANGUAGE, POSITION_DELTA, ROTATION_AA, DimSpec


class ProbeModelServer(PredictModelServer):
    def __init__(self, instructions: str | None = None) -> None:
        super().__init__(chunk_size=CHUNK)
        self.instructions = instructions

    def predict(self, obs: dict[str, Any], ctx) -> dict[str, Any]:
        instruction = str(obs["task_description"])
        if self.instructions:
            with open(self.instructions, "a", encoding="utf-8") as f:
                f.write(f"{ctx.episode_id}\t{instruction}\n")
        return {"actions": probe_chunk(obs["states"][:3], instruction)}

    def get_action_spec(self) -> dict[str, DimSpec]:
        return {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS}

    def get_observation_spec(self) -> dict[str, DimSpec]:
        return {"agentview": IMAGE_RGB, "language": LANGUAGE}
