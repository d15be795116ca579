"""What one request to `asyncvla-eval serve` may hold, checked before it joins a batch.

The policy's calls run one at a time (`evalsuite.serving.policy_server`), so a request's cost is
every other client's wait: a prompt's attention grows with the square of its length (20,000
characters took the demo model minutes and gigabytes), and an image is resized before the model
sees it. Both are bounded here, in the checkpoint's tokens and in pixels a side. A state is checked
against the checkpoint's normalisation statistics: far enough from the training data it overflows
float32 once normalised and comes back from the model as NaN, which would be blamed on the
checkpoint rather than on the client's value. Each refusal is a `WireError` naming the value and
the limit; the server answers it as a bad request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.base import Observation
from evalsuite.serving.remote import WireLayout
from evalsuite.serving.wire import WireError

MAX_PROMPT_TOKENS = 256  # an instruction is a sentence or two
MAX_IMAGE_PX = 2048  # a side: cameras' full frames pass; the model resizes them to its image_size
MAX_STATE_STD = 1e6  # standard deviations from the training data's mean: further out, absurd
CHARS_PER_TOKEN = 4  # a policy without a tokenizer the server knows: its prompt's characters per token


@dataclass
class RequestLimits:
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    max_image_px: int = MAX_IMAGE_PX
    tokenizer: Any = None  # the checkpoint's, to count a prompt's tokens (None: count characters)
    state_mean: np.ndarray | None = None  # the checkpoint's normalisation (None: a state is not checked)
    state_std: np.ndarray | None = None
    chars_per_token: int = field(init=False)  # the longest token: more characters than the limit
    # times this are more tokens than the limit, and are refused without tokenizing them

    def __post_init__(self) -> None:
        self.chars_per_token = (
            max(map(len, self.tokenizer.get_vocab())) if self.tokenizer is not None else CHARS_PER_TOKEN
        )

    @classmethod
    def for_policy(cls, policy: Any, max_prompt_tokens: int, max_image_px: int) -> RequestLimits:
        """An AsyncVLA policy's tokenizer and state statistics; a module:Class policy has neither."""
        stats = getattr(policy, "stats", None)
        mean, std = getattr(stats, "state_mean", None), getattr(stats, "state_std", None)
        return cls(
            max_prompt_tokens,
            max_image_px,
            tokenizer=getattr(getattr(policy, "preprocessor", None), "tokenizer", None),
            state_mean=None if mean is None else np.asarray(mean, np.float64),
            state_std=None if std is None else np.asarray(std, np.float64),
        )

    def check(self, obs: Observation, layout: WireLayout, cameras: list[str] | None) -> None:
        """A `WireError` for the first limit the request passes, naming its value and the limit."""
        self.check_prompt(obs.instruction, layout.prompt)
        for camera, image in obs.images.items():
            if max(image.shape[:2]) > self.max_image_px:
                wire = layout.image_keys(cameras)[camera] if cameras else layout.images.get(camera, camera)
                raise WireError(
                    f"the image under {wire!r} is {image.shape[0]}x{image.shape[1]} pixels; this server "
                    f"takes at most {self.max_image_px} a side (--max-image-px)"
                )
        if self.state_mean is not None and self.state_std is not None:
            self.check_state(obs.state, layout.state)

    def check_prompt(self, prompt: str, wire: str) -> None:
        """At most `max_prompt_tokens` tokens of the checkpoint's tokenizer, counted on the prompt as
        the policy strips it."""
        prompt = prompt.strip()
        limit = f"this server takes at most {self.max_prompt_tokens} (--max-prompt-tokens)"
        if len(prompt) > self.max_prompt_tokens * self.chars_per_token:
            per_token = (
                f"at most {self.chars_per_token} characters each in the checkpoint's tokenizer"
                if self.tokenizer is not None
                else f"{self.chars_per_token} characters each: the policy has no tokenizer the server knows"
            )
            raise WireError(
                f"the prompt under {wire!r} has {len(prompt)} characters, more than "
                f"{self.max_prompt_tokens} tokens can hold ({per_token}); {limit}"
            )
        if self.tokenizer is not None:
            tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if tokens > self.max_prompt_tokens:
                raise WireError(
                    f"the prompt under {wire!r} is {tokens} tokens long (the checkpoint's tokenizer); {limit}"
                )

    def check_state(self, state: np.ndarray, wire: str) -> None:
        """Within `MAX_STATE_STD` standard deviations of the training data's mean in every dimension
        (a size that does not match the statistics is the server's state_dim check's to refuse)."""
        sent = state.reshape(-1).astype(np.float64)
        if sent.shape != self.state_mean.shape:
            return
        deviations = np.abs(sent - self.state_mean) / self.state_std
        far = np.flatnonzero(deviations > MAX_STATE_STD)
        if far.size:
            i = far[0]
            raise WireError(
                f"the state under {wire!r} has {sent[i]:g} at index {i}, {deviations[i]:.3g} standard "
                f"deviations from the training data's mean ({self.state_mean[i]:.3g} +- "
                f"{self.state_std[i]:.3g}); this server takes states within {MAX_STATE_STD:g} standard "
                "deviations of it: send the state in the units the policy was trained with"
            )
