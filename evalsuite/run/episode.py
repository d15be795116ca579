"""One episode: reset to the fixed initial state, execute action chunks, follow the suite's end rule.

Shared by the inline loop and the Ray env workers, so both produce identical records.

With a latency (`SuiteSpec.latency`, `--latency`) the robot keeps moving while the policy thinks:
`evalsuite.run.asynchronous` runs the episode (query ahead, the join of a late chunk, pause and
stale steps). Without one, the robot waits for each chunk and executes its first `replan_steps`.
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
from evalsuite.run.asynchronous import jerk, run_asynchronous
from evalsuite.run.watchdog import step_limit
from evalsuite.suites.spec import SuiteSpec
from evalsuite.videos import PolicyCall, encode_mp4, video_frames

# act(observations, keys) -> [B, L, action_dim]; local policy or a call into the policy server
ActFn = Callable[[list[Observation], list[str]], np.ndarray]


@dataclass
class EpisodeResult:
    record: EpisodeRecord
    video: bytes | None = None  # mp4 bytes when the episode was recorded


class _Rollout:
    """An episode's state as it steps: the last observation and outcome, the step count, the
    frames of its video; `step` executes one action and applies the suite's end rule."""

    def __init__(
        self, env: Env, suite: SuiteSpec, obs: Observation, budget: int, record_video: bool, step_timeout_s
    ):
        self.env, self.suite, self.obs, self.budget = env, suite, obs, budget
        self.record_video, self.step_timeout_s = record_video, step_timeout_s
        self.frames = [env.render_frame()] if record_video else []
        self.success, self.done, self.ended = False, False, False
        self.steps = 0
        self.last: np.ndarray | None = None  # the last action executed
        self.info: dict = {}

    def step(self, action: np.ndarray, need_images: bool) -> None:
        # a recorded step renders once: render_frame() reuses the observation's images where the env can
        with step_limit(self.step_timeout_s, f"step {self.steps}"):
            self.obs, self.done, self.success, self.info = self.env.step(
                action, render=need_images or self.record_video
            )
        self.steps += 1
        self.last = action
        if self.record_video:
            self.frames.append(self.env.render_frame())
        self.ended = self.done or (self.success and self.suite.end_on_success) or self.steps >= self.budget


def run_episode(
    env: Env,
    suite: SuiteSpec,
    spec: EpisodeSpec,
    act: ActFn,
    replan_steps: int | None,
    max_steps: int | None = None,
    record_video: bool = False,
    video_fps: int = 20,
    step_timeout_s: float | None = None,
    chunk_info: Callable[[str], dict | None] | None = None,
) -> EpisodeResult:
    """One episode. `chunk_info(key)`, where the policy has it, says what the policy did for the
    request `key` (AsyncVLA: how many tokens AFM regenerated): asked after every call, so the
    record carries each chunk's regenerated count (`regenerated_per_call`, `chunk_tokens`: the
    rater's diagnostics in the run's tables) as well as the video strip."""
    task = suite.task(spec.task)
    start = time.perf_counter()
    builds = getattr(env, "builds", None)
    obs = env.reset(spec.task, spec.episode_index, spec.seed)
    reset_s = time.perf_counter() - start
    run = _Rollout(env, suite, obs, max_steps or task.max_steps, record_video, step_timeout_s)

    calls: list[PolicyCall] = []
    paths: set[str] = set()  # the inference paths the policy says its chunks took (AsyncVLA)

    def ask(observation: Observation) -> np.ndarray:
        key = f"{spec.draw_key}@{run.steps}"
        chunk = _checked_chunk(act([observation], [key])[0], suite, replan_steps)
        info = (chunk_info(key) if chunk_info else None) or {}
        calls.append(PolicyCall(run.steps, info.get("regenerated"), info.get("tokens")))
        if info.get("path"):
            paths.add(str(info["path"]))
        return chunk

    if suite.latency is None:
        measured = _run_synchronous(run, ask, replan_steps)
    else:
        measured = run_asynchronous(run, ask, suite, replan_steps)
    record = EpisodeRecord.for_spec(
        spec,
        success=bool(run.success),
        steps=run.steps,
        wall_time_s=time.perf_counter() - start,
        info={
            "policy_calls": measured.pop("policy_calls"),
            "env_done": bool(run.done),
            # a fingerprint of the trajectory: two runs of an episode that agree here took the same path
            "final_state": [round(float(x), 6) for x in run.obs.state],
            "reset_s": round(reset_s, 3),
            **({"env_built": env.builds != builds} if builds is not None else {}),
            **_regenerated(calls),
            # which inference path computed the episode's chunks (a fallback from the optimised one
            # shows here and in run.json's `inference_paths`); several joined by " / "
            **({"inference_path": " / ".join(sorted(paths))} if paths else {}),
            **measured,
            **_scalars(run.info),
        },
    )
    video = None
    if record_video and run.frames:
        outcome = f"{'success' if run.success else 'failure'} after {run.steps} steps"
        cameras = len(run.obs.images) or len(getattr(env, "cameras", ())) or 1
        frames, _ = video_frames(run.frames, cameras, run.obs.instruction or task.instruction, outcome, calls)
        video = encode_mp4(frames, fps=video_fps)
    return EpisodeResult(record, video)


def _regenerated(calls: list[PolicyCall]) -> dict:
    """Each call's count of tokens AFM regenerated, where the policy says (AsyncVLA's modes), and
    the chunk's length: how often the rater fired, per chunk (evalsuite.tables.regenerated_table)."""
    if not calls or any(c.regenerated is None for c in calls):
        return {}
    return {"regenerated_per_call": [int(c.regenerated) for c in calls], "chunk_tokens": int(calls[0].tokens)}


def _run_synchronous(
    run: _Rollout, ask: Callable[[Observation], np.ndarray], replan_steps: int | None
) -> dict:
    """The robot waits for each chunk and executes its first `replan_steps` actions; the calls made
    and the jerk of the executed actions (as asynchronous execution reports it)."""
    queue: list[np.ndarray] = []  # the current chunk's actions up to the next request
    calls, executed = 0, []
    while not run.ended:
        if not queue:
            chunk = ask(run.obs)
            calls += 1
            queue = list(chunk[: replan_steps or len(chunk)])
        executed.append(queue.pop(0))
        # the step before the queue runs dry renders: the next step asks the policy again
        run.step(executed[-1], need_images=not queue and run.steps + 1 < run.budget)
    return {"policy_calls": calls, "jerk": round(jerk(np.array(executed)), 6)}


def _checked_chunk(chunk, suite: SuiteSpec, replan_steps: int | None) -> np.ndarray:
    """Every chunk holds at least one action of the suite's size, and at least the `replan_steps`
    the run promises (run.json) to execute of each: a shorter one would be executed whole, and the
    run would measure another replanning than it says."""
    chunk = np.asarray(chunk, dtype=np.float32)
    if chunk.ndim != 2 or chunk.shape[1] != suite.action_dim or chunk.shape[0] == 0:
        raise InvalidAction(
            f"policy returned a chunk of shape {chunk.shape}; suite {suite.name!r} needs "
            f"[L, {suite.action_dim}] actions with L >= 1"
        )
    if replan_steps and chunk.shape[0] < replan_steps:
        raise InvalidAction(
            f"policy returned a chunk of {chunk.shape[0]} actions, but the run executes "
            f"{replan_steps} of each chunk (--replan-steps {replan_steps}); the policy must return "
            f"chunks of at least {replan_steps} actions, or use --replan-steps {chunk.shape[0]}"
        )
    return chunk


def _scalars(info: dict) -> dict:
    """Keep the JSON-friendly scalar entries of a simulator's info dict."""
    out = {}
    for key, value in info.items():
        if isinstance(value, (bool, int, float, str, np.bool_, np.integer, np.floating)):
            out[str(key)] = value.item() if hasattr(value, "item") else value
    return out
