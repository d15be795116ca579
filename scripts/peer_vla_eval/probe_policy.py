"""A deterministic closed-loop policy for side-by-side checks (scripts/check_libero_pro_peer.py).

`probe_chunk(position, instruction)` is a pure function of the end effector's position and of the
instruction: an 8-step chunk moving towards a target point chosen from the instruction's CRC-32,
the gripper closing below a height. The same function drives our harness (`ProbePolicy`, as
`--policy probe_policy:ProbePolicy` with this folder on PYTHONPATH) and vla-eval's model server
(probe_server.py): where both harnesses give it the same observations, they execute the same
actions, and where they give it different instructions the trajectories part.
With $PROBE_TARGET_TEXT set, the target comes from that text instead (a control run that ignores
the instruction). `ProbePolicy` appends the key, instruction and state of every call to $PROBE_INSTRUCTIONS when that
is set (tab-separated).
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

CHUNK = 8


def probe_chunk(position, instruction: str) -> np.ndarray:
    """(8, 7) float32: proportional steps towards the instruction's target; gripper +1 (close)
    below z = 0.95 m, else -1 (open): exactly +-1, so a client that binarises it changes nothing."""
    text = os.environ.get("PROBE_TARGET_TEXT") or instruction  # set: a control that ignores the instruction
    crc = zlib.crc32(text.encode("utf-8"))
    target = np.array([-0.15 + 0.3 * ((crc & 0xFF) / 255), -0.15 + 0.3 * (((crc >> 8) & 0xFF) / 255), 0.9])
    # float32 first: our observations carry the state as float32, vla-eval's as float64
    position = np.asarray(position, dtype=np.float32)[:3].astype(np.float64)
    step = np.clip(8.0 * (target - position), -1.0, 1.0)
    action = np.zeros(7, dtype=np.float32)
    action[:3] = step
    action[6] = 1.0 if position[2] < 0.95 else -1.0
    return np.repeat(action[None], CHUNK, axis=0)


class ProbePolicy:
    """Our Policy contract (docs/CONTRACTS.md) around `probe_chunk`."""

    action_dim = 7
    chunk_length = CHUNK

    def act(self, observations, keys):
        log = os.environ.get("PROBE_INSTRUCTIONS")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.writelines(
                    f"{key}\t{obs.instruction}\t{json.dumps(obs.state.tolist())}\n"
                    for obs, key in zip(observations, keys)
                )
        return np.stack([probe_chunk(obs.state[:3], obs.instruction) for obs in observations])

    def reset(self, episode_key: str) -> None:
        pass
