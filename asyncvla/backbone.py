"""The Qwen2.5-VL backbone: building it offline, its tokenizer and image processor, the prefix.

The prefix of a chunk is the VLM's input: the chat-formatted prompt ("You are a helpful
physical assistant." + instruction) with one image per camera, followed by one projected
proprio-state token (added in model.py). It is left-padded so that every sample's prefix
ends at the same column and the action suffix follows it directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asyncvla.config import PROMPT, QWEN_SPECIAL_TOKENS, ModelConfig

log = logging.getLogger(__name__)

# Text the tiny tokenizer's merges are learnt from: the prompt and the words of tabletop
# manipulation instructions. Any other text still tokenizes (byte-level BPE), just longer.
_TINY_CORPUS = [
    PROMPT,
    "pick up the red cube and place it in the bowl",
    "put the green block on the plate; open the drawer; close the top drawer of the cabinet",
    "push the blue button, stack the yellow cube on the orange cube, move the mug to the left",
    "turn on the stove and put the moka pot on it; put both the alphabet soup and the tomato sauce in the basket",
    "pick the coke can, move near the apple, put the spoon on the towel, put carrot on plate",
    "put eggplant in basket, stack the green block on the yellow block, slide the black bowl to the right",
]


def build_tiny_tokenizer(vocab_size: int):
    """A byte-level BPE with the Qwen special tokens, trained here in milliseconds (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
    )


def load_tokenizer(path: str | Path):
    """A tokenizer from a local directory (a checkpoint or a Qwen2.5-VL model directory)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{path / 'tokenizer.json'} is missing: a checkpoint or model directory must contain the "
            "tokenizer files written by tokenizer.save_pretrained()"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def special_token_ids(tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks the Qwen2.5-VL special tokens {missing}")
    return ids


def build_vlm(
    cfg: ModelConfig, tokenizer, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
):
    """Qwen2_5_VLForConditionalGeneration: from `cfg.backbone_dir` if given, else random init."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if cfg.backbone_dir:
        log.info("loading the Qwen2.5-VL backbone from %s", cfg.backbone_dir)
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(
            cfg.backbone_dir,
            local_files_only=True,
            dtype=dtype,
            attn_implementation="sdpa",
            device_map=str(device),
        )
    vlm_cfg = cfg.backbone_config(special_token_ids(tokenizer))
    if len(tokenizer) > cfg.text.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the text vocab is {cfg.text.vocab_size}")
    vlm_cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype: a 3B fp32 copy is 16 GB
    try:
        with torch.device(device):  # random init on the GPU: seconds instead of minutes for 3B
            return Qwen2_5_VLForConditionalGeneration(vlm_cfg)
    finally:
        torch.set_default_dtype(old)


@dataclass
class VLInputs:
    """A tokenized, image-processed batch of prefixes (left-padded to the same length)."""

    input_ids: torch.Tensor  # (B, P) long
    valid: torch.Tensor  # (B, P) bool, False on left padding
    pixel_values: torch.Tensor  # (sum of patches, C*T*p*p) float
    image_grid_thw: torch.Tensor  # (B * cameras, 3) long
    state: torch.Tensor  # (B, state_dim) float, already normalised

    def to(self, device: torch.device | str) -> VLInputs:
        return VLInputs(
            *(
                t.to(device)
                for t in (self.input_ids, self.valid, self.pixel_values, self.image_grid_thw, self.state)
            )
        )


class Preprocessor:
    """Raw observations (uint8 images, instruction, normalised state) -> `VLInputs`."""

    def __init__(self, cfg: ModelConfig, tokenizer):
        from transformers import Qwen2VLImageProcessorPil

        self.cfg = cfg
        self.tokenizer = tokenizer
        pixels = cfg.image_size * cfg.image_size
        # min = max pixels: every image becomes image_size x image_size, a fixed token count
        self.image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": pixels, "longest_edge": pixels},
            patch_size=cfg.vision.patch_size,
            merge_size=cfg.vision.spatial_merge_size,
            temporal_patch_size=cfg.vision.temporal_patch_size,
        )
        # Every uint8 value's normalised float, by the processor's own arithmetic (float64 rescale,
        # float32 normalise): a lookup then gives the processor's pixels bit for bit
        # (tests/test_fast.py) for a whole batch at once, on the model's device, where the
        # processor loops over images on the host (the 3B's 32 images at 224 px: a quarter of a
        # batch-16 chunk on a GPU; several times the lookup's time on a CPU)
        p = self.image_processor
        scaled = (np.arange(256, dtype=np.float64) * p.rescale_factor).astype(np.float32)[None]
        mean = np.asarray(p.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(p.image_std, dtype=np.float32)[:, None]
        self._normalised = torch.from_numpy((scaled - mean) / std)  # (3, 256)
        self._prompt_ids: dict[str, list[int]] = {}  # an episode sends one instruction every chunk
        self.pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def prompt(self, instruction: str) -> str:
        image = "<|vision_start|>" + "<|image_pad|>" * self.cfg.image_tokens_per_camera + "<|vision_end|>"
        return (
            f"<|im_start|>system\n{PROMPT}<|im_end|>\n<|im_start|>user\n"
            f"{image * len(self.cfg.cameras)}{instruction.strip()}<|im_end|>\n<|im_start|>assistant\n"
        )

    def prompt_ids(self, instruction: str) -> list[int]:
        """The prompt's token ids, remembered per instruction."""
        if instruction not in self._prompt_ids:
            if len(self._prompt_ids) > 4096:
                self._prompt_ids.clear()
            prompt = self.prompt(instruction)
            self._prompt_ids[instruction] = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self._prompt_ids[instruction]

    def _square(self, image: np.ndarray, camera: str) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"camera {camera!r}: expected an HxWx3 uint8 image, got {image.shape} {image.dtype}"
            )
        size = self.cfg.image_size
        if image.shape[:2] != (size, size):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        return image

    def patchify(
        self, images: list[np.ndarray], device: str | torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Square uint8 images -> (patches, grid_thw) on `device`, as `Qwen2VLImageProcessorPil`
        makes them for images already at the model's size: rescaled and normalised, each frame
        repeated over the temporal patch, patches in merge-block order."""
        v = self.cfg.vision
        p, m, t = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
        pixels = torch.from_numpy(np.stack(images)).to(device).long()  # (N, H, W, 3)
        lut = self._normalised.to(device)
        x = torch.stack([lut[c][pixels[..., c]] for c in range(3)], dim=1)  # (N, 3, H, W)
        N, C, H, W = x.shape
        gh, gw = H // p, W // p
        x = x.view(N, C, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x[:, :, :, :, :, :, None].expand(*x.shape[:6], t, p, p)
        grid = torch.tensor([[1, gh, gw]] * N, dtype=torch.long)
        return x.reshape(N * gh * gw, C * t * p * p), grid

    def __call__(
        self,
        images: list[dict[str, np.ndarray]],
        instructions: list[str],
        states: np.ndarray,
        device: str | torch.device | None = None,
    ) -> VLInputs:
        """The batch's inputs, the pixels prepared on `device` (default: the CPU) and the rest on the
        CPU for `VLInputs.to`."""
        flat = []
        for i, cams in enumerate(images):
            for cam in self.cfg.cameras:
                if cam not in cams:
                    raise ValueError(
                        f"observation {i} has no image for camera {cam!r} (has {sorted(cams)}); the model was "
                        f"trained with cameras {self.cfg.cameras}: render them on the step the policy acts"
                    )
                flat.append(self._square(cams[cam], cam))
        pixel_values, grid = self.patchify(flat, "cpu" if device is None else device)
        ids = [self.prompt_ids(s) for s in instructions]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((len(ids), width), dtype=torch.bool)
        for i, x in enumerate(ids):  # left padding: all prefixes end in the same column
            input_ids[i, width - len(x) :] = torch.tensor(x)
            valid[i, width - len(x) :] = True
        states = np.asarray(states, dtype=np.float32)
        if states.ndim != 2 or states.shape[1] != self.cfg.state_dim:
            raise ValueError(f"state has shape {states.shape}, expected (batch, {self.cfg.state_dim})")
        return VLInputs(
            input_ids=input_ids,
            valid=valid,
            pixel_values=pixel_values,
            image_grid_thw=grid,
            state=torch.from_numpy(states),
        )
