"""One episode: reset to the fixed initial state, execute action chunks, follow the suite's end rule.

Shared by the inline loop and the Ray env workers, so both produce identical records.
Rendering is requested only on steps whose images are used: the step before the policy is asked
for its next chunk, and every step of an episode whose video is being recorded (whose frames an
env such as the tabletop's takes from the observation's images rather than rendering again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from envs.base import Env, InvalidAction, Observation
from evalsuite.records import EpisodeRecord, EpisodeSpec
from evalsuite.suites.spec import SuiteSpec
from evalsuite.videos import caption_frames, encode_mp4

# act(observations, keys) -> [B, L, action_dim]; local policy or a call into the policy server
ActFn = Callable[[list[Observation], list[str]], np.ndarray]


@dataclass
class EpisodeResult:
    record: EpisodeRecord
    video: bytes | None = None  # mp4 bytes when the episode was recorded


def run_episode(
    env: Env,
    suite: SuiteSpec,
    spec: EpisodeSpec,
    act: ActFn,
    replan_steps: int | None,
    max_steps: int | None = None,
    record_video: bool = False,
    video_fps: int = 20,
) -> EpisodeResult:
    task = suite.task(spec.task)
    budget = max_steps or task.max_steps
    start = time.perf_counter()
    builds = getattr(env, "builds", None)
    obs = env.reset(spec.task, spec.episode_index, spec.seed)
    reset_s = time.perf_counter() - start
    frames = [env.render_frame()] if record_video else []
    queue: list[np.ndarray] = []
    success, steps, done, policy_calls = False, 0, False, 0
    info: dict = {}
    while steps < budget:
        if not queue:
            chunk = np.asarray(act([obs], [f"{spec.draw_key}@{steps}"])[0], dtype=np.float32)
            if chunk.ndim != 2 or chunk.shape[1] != suite.action_dim:
                raise InvalidAction(
                    f"policy returned a chunk of shape {chunk.shape}; suite {suite.name!r} needs "
                    f"[L, {suite.action_dim}] actions"
                )
            queue = list(chunk[: replan_steps or len(chunk)])
            policy_calls += 1
        action = queue.pop(0)
        need_images = not queue and steps + 1 < budget  # the next step asks the policy again
        # a recorded step renders once: render_frame() reuses the observation's images where the env can
        obs, done, success, info = env.step(action, render=need_images or record_video)
        steps += 1
        if record_video:
            frames.append(env.render_frame())
        if done or (success and suite.end_on_success):
            break
    record = EpisodeRecord.for_spec(
        spec,
        success=bool(success),
        steps=steps,
        wall_time_s=time.perf_counter() - start,
        info={
            "policy_calls": policy_calls,
            "env_done": bool(done),
            # a fingerprint of the trajectory: two runs of an episode that agree here took the same path
            "final_state": [round(float(x), 6) for x in obs.state],
            "reset_s": round(reset_s, 3),
            **({"env_built": env.builds != builds} if builds is not None else {}),
            **_scalars(info),
        },
    )
    video = None
    if record_video and frames:
        outcome = f"{'success' if success else 'failure'} after {steps} steps"
        video = encode_mp4(
            caption_frames(frames, obs.instruction or task.instruction, outcome), fps=video_fps
        )
    return EpisodeResult(record, video)


def _scalars(info: dict) -> dict:
    """Keep the JSON-friendly scalar entries of a simulator's info dict."""
    out = {}
    for key, value in info.items():
        if isinstance(value, (bool, int, float, str, np.bool_, np.integer, np.floating)):
            out[str(key)] = value.item() if hasattr(value, "item") else value
    return out
