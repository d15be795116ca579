"""The fast inference path (asyncvla/fast/) against the reference path of asyncvla/model.py.

On CPU in float32 the two are bit-identical: the fast path runs the same operations in the same
order (fused q/k/v and gate/up products give the same dot products). On CUDA (bf16, CUDA graphs,
batch and prefix padding) the results agree to bf16 precision; those tests skip without a GPU
and run in scripts/gpu_check.sh.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from asyncvla.backbone import Preprocessor, build_tiny_tokenizer
from asyncvla.config import ModelConfig
from asyncvla.fast.graphs import batch_bucket
from asyncvla.fast.layers import decoder_layer
from asyncvla.fast.sampler import FastSampler
from asyncvla.model import AsyncVLA
from asyncvla.normalize import NormStats
from asyncvla.policy import AsyncVLAPolicy
from evalsuite.run.watchdog import TimeLimitExceeded

INSTRUCTIONS = [
    "pick up the red cube",
    "open the top drawer of the cabinet and stop",
    "go",
    "put the green block on the plate",
]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")


def _gens(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def _inputs(cfg, tok, batch, seed=0):
    rng = np.random.default_rng(seed)
    images = [
        {c: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras}
        for _ in range(batch)
    ]
    instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch)]
    return Preprocessor(cfg, tok)(images, instructions, rng.normal(size=(batch, cfg.state_dim)))


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig.named("tiny")
    tok = build_tiny_tokenizer(cfg.text.vocab_size)
    torch.manual_seed(0)
    model = AsyncVLA(cfg, tok).eval()
    return model, tok, FastSampler(model)


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("mode", ["asyncvla", "sfm", "random-mask"])
def test_fast_equals_eager_bit_for_bit(tiny, batch, mode):
    model, tok, fast = tiny
    inputs = _inputs(model.cfg, tok, batch)
    if batch > 1:
        assert not inputs.valid.all()  # prompts of different lengths: left padding is exercised
    eager = model.sample_actions(inputs, _gens(batch), mode)
    quick = fast.sample_actions(inputs, _gens(batch), mode)
    assert torch.equal(eager.sfm, quick.sfm)
    assert torch.equal(eager.actions, quick.actions)
    assert torch.equal(eager.mask, quick.mask)
    if mode == "asyncvla":
        assert torch.equal(eager.confidence, quick.confidence)
    if mode != "sfm":
        assert 0 < quick.mask.sum() < quick.mask.numel()  # AFM regenerated some tokens, not all


@pytest.mark.parametrize("threshold", [1e-9, 1.0 - 1e-9])  # AFM masks no token / every token
def test_fast_equals_eager_when_afm_masks_none_or_all(tiny, threshold):
    model, tok, fast = tiny
    inputs = _inputs(model.cfg, tok, 3)
    eager = model.sample_actions(inputs, _gens(3), "asyncvla", threshold)
    quick = fast.sample_actions(inputs, _gens(3), "asyncvla", threshold)
    assert quick.mask.sum() in (0, quick.mask.numel())
    assert torch.equal(eager.actions, quick.actions) and torch.equal(eager.mask, quick.mask)


def test_paper_style_pipeline_equals_eager(tiny):
    model, tok, fast = tiny
    inputs = _inputs(model.cfg, tok, 2)
    assert torch.equal(
        model.sample_actions_recompute(inputs, _gens(2)), fast.sample_actions_recompute(inputs, _gens(2))
    )


def test_a_request_batched_with_others_gets_its_chunk_alone(tiny):
    model, tok, fast = tiny
    both = fast.sample_actions(_inputs(model.cfg, tok, 3), _gens(3), "asyncvla")
    # the third observation of that batch, alone (same images, instruction and state)
    alone_inputs = _inputs(model.cfg, tok, 3)
    alone_inputs.input_ids, alone_inputs.valid = alone_inputs.input_ids[2:], alone_inputs.valid[2:]
    alone_inputs.state = alone_inputs.state[2:]
    patches = alone_inputs.pixel_values.shape[0] // 3
    alone_inputs.pixel_values = alone_inputs.pixel_values[2 * patches :]
    alone_inputs.image_grid_thw = alone_inputs.image_grid_thw[2 * len(model.cfg.cameras) :]
    keep = alone_inputs.valid[0]
    alone_inputs.input_ids, alone_inputs.valid = alone_inputs.input_ids[:, keep], alone_inputs.valid[:, keep]
    alone = fast.sample_actions(alone_inputs, _gens(1, offset=2), "asyncvla")
    assert (alone.actions[0] - both.actions[2]).abs().max().item() < 1e-4


def test_policy_runs_the_fast_path_by_default_and_the_reference_on_request(tiny):
    model, tok, _ = tiny
    stats = NormStats.identity(model.cfg.state_dim, model.cfg.action_dim)
    assert isinstance(AsyncVLAPolicy(model, tok, stats).sampler, FastSampler)
    assert AsyncVLAPolicy(model, tok, stats, fast=False).sampler is model


def test_batch_buckets_and_prefix_padding(tiny):
    """The graphs' padding: rows copied from the last sample, prompts left-padded; the padded
    prefix embeds every real sample as the unpadded one does."""
    assert [batch_bucket(b) for b in (1, 2, 3, 5, 8, 9, 16, 17, 40)] == [1, 2, 4, 8, 8, 16, 16, 32, 48]
    model, tok, fast = tiny
    inputs = _inputs(model.cfg, tok, 3)
    P = inputs.input_ids.shape[1]
    plain, padded = fast.host_prefix(inputs), fast.host_prefix(inputs, rows=4, length=P + 5)
    assert padded.input_ids.shape == (4, P + 5) and padded.valid.shape == (4, P + 6)
    assert not padded.valid[:, :5].any() and torch.equal(padded.valid[:3, 5:], plain.valid)
    assert torch.equal(padded.input_ids[3], padded.input_ids[2])
    assert torch.equal(padded.positions[:, :3, 5:], plain.positions)
    with torch.no_grad():
        a = fast.embed(plain.plan, *plain.tensors()[:4])
        b = fast.embed(padded.plan, *padded.tensors()[:4])
    # a batch of another size may take other matrix kernels: equal up to float32 rounding
    assert (a - b[:3, 5:]).abs().max().item() < 1e-5


def test_the_prefix_embedding_equals_the_reference(tiny):
    model, tok, fast = tiny
    inputs = _inputs(model.cfg, tok, 3)
    host = fast.host_prefix(inputs)
    with torch.no_grad():
        reference = model.embed_prefix(inputs)
        embeds = fast.embed(host.plan, *host.tensors()[:4])
    assert torch.equal(embeds, reference.embeds)
    assert torch.equal(host.positions, reference.positions) and torch.equal(host.valid, reference.valid)
    assert torch.equal(host.next_position, reference.next_position)


def test_the_fast_path_builds_for_the_3b_layout():
    """The 3B's head layout (16 query heads, 2 key/value heads, head_dim 128, mrope 16:24:24) on the
    meta device: the fast layer's shapes work out at full size, not only for the tiny model."""
    cfg = ModelConfig.named("qwen2.5-vl-3b")
    cfg.text.vocab_size = 512
    model = AsyncVLA(cfg, build_tiny_tokenizer(512), dtype=torch.bfloat16, device="meta")
    fast = FastSampler(model, graphs=False)
    assert (fast.heads, fast.head_dim, len(fast.layers)) == (16, 128, 36)
    B, P, L, d = 2, 40, cfg.chunk_length, cfg.text.hidden_size
    state_shape = (B, fast.heads, P + L, fast.head_dim)
    keys = [torch.zeros(state_shape, dtype=torch.bfloat16, device="meta") for _ in fast.layers]
    values = [torch.zeros(state_shape, dtype=torch.bfloat16, device="meta") for _ in fast.layers]
    cos = torch.zeros(B, L, 1, fast.head_dim, dtype=torch.bfloat16, device="meta")
    mask = torch.zeros(B, 1, L, P + L, dtype=torch.bfloat16, device="meta")
    x = torch.zeros(B, L, d, dtype=torch.bfloat16, device="meta")
    out = fast.run_layers(x, keys, values, cos, cos, mask)
    assert out.shape == (B, L, d)


def _scaled_3b(dtype, device):
    """The 3B configuration's layout at reduced width (as tests/test_model_core.py builds it)."""
    small = ModelConfig.named("qwen2.5-vl-3b")
    small.text.hidden_size, small.text.num_layers, small.text.intermediate_size = 256, 2, 688
    small.text.num_heads, small.text.num_kv_heads = 2, 1  # head_dim 128 as the 3B's
    small.vision.depth, small.vision.hidden_size, small.vision.intermediate_size = 2, 80, 214
    small.vision.num_heads, small.vision.fullatt_block_indexes = 1, [1]
    small.rater.num_heads, small.rater.ffn_size, small.rater.num_layers, small.rater.hidden_size = (
        4,
        384,
        1,
        192,
    )
    small.image_size, small.text.vocab_size = 56, 512
    small.validate()
    tok = build_tiny_tokenizer(512)
    torch.manual_seed(0)
    return AsyncVLA(small, tok, dtype=dtype, device=device).eval(), tok


def test_fast_equals_eager_on_the_3b_layout_at_reduced_width():
    model, tok = _scaled_3b(torch.float32, "cpu")
    inputs = _inputs(model.cfg, tok, 3)
    eager = model.sample_actions(inputs, _gens(3), "random-mask")
    assert torch.equal(
        eager.actions, FastSampler(model).sample_actions(inputs, _gens(3), "random-mask").actions
    )


@cuda
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("mode", ["asyncvla", "sfm", "random-mask"])
def test_cuda_graphs_equal_the_fast_path_without_graphs(batch, mode):
    """fp32 on the GPU: graphs (batch padded to its bucket, prefix padded to a multiple of 32)
    against the same fast path run op by op; padding changes only reduction order."""
    model, tok = _scaled_3b(torch.float32, "cuda")
    inputs = _inputs(model.cfg, tok, batch).to("cuda")
    plain = FastSampler(model, graphs=False).sample_actions(inputs, _gens(batch), mode)
    graphed = FastSampler(model, graphs=True)
    for _ in range(2):  # the second call replays the captured graph
        r = graphed.sample_actions(inputs, _gens(batch), mode)
        assert r.actions.shape == plain.actions.shape
        assert (r.actions - plain.actions).abs().max().item() < 1e-4
        assert torch.equal(r.mask, plain.mask) or mode == "asyncvla"  # a confidence at T may flip
    # both calls ran in a captured graph with the compiled layer: a fallback (which would agree
    # with the plain path as well) fails here
    assert graphed.paths_run == {"graphs+compiled": 2} and not graphed.fallbacks, graphed.fallbacks


@cuda
def test_cuda_bf16_fast_path_is_close_to_eager():
    model, tok = _scaled_3b(torch.bfloat16, "cuda")
    inputs = _inputs(model.cfg, tok, 4).to("cuda")
    eager = model.sample_actions(inputs, _gens(4), "sfm")
    sampler = FastSampler(model)
    fast = sampler.sample_actions(inputs, _gens(4), "sfm")
    assert (eager.actions - fast.actions).abs().max().item() < 0.1  # bf16: other kernels, other rounding
    assert sampler.fast_path == "graphs+compiled" and not sampler.fallbacks, sampler.fallbacks


@pytest.mark.parametrize("size", ["tiny", "qwen2.5-vl-3b"])
def test_patchify_equals_the_image_processor(size):
    """The lookup-table pixels (what the preprocessor uses, on any device) are the processor's, bit
    for bit, at both sizes' image and patch layouts."""
    cfg = ModelConfig.named(size)
    pre = Preprocessor(cfg, build_tiny_tokenizer(512))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for _ in range(3)]
    reference = pre.image_processor(images=images, return_tensors="pt")
    pixels, grid = pre.patchify(images, "cuda" if torch.cuda.is_available() else "cpu")
    assert torch.equal(pixels.cpu(), reference["pixel_values"])
    assert torch.equal(grid, reference["image_grid_thw"])


@cuda
def test_cuda_default_compiled_graphs_equal_the_fast_path_without_graphs():
    """The policy's default on CUDA: graphs around the torch.compile'd layer (fp32 here)."""
    model, tok = _scaled_3b(torch.float32, "cuda")
    inputs = _inputs(model.cfg, tok, 2).to("cuda")
    default = FastSampler(model)
    assert default.graphs_enabled and default.layer_fn is not decoder_layer
    plain = FastSampler(model, graphs=False).sample_actions(inputs, _gens(2), "random-mask")
    for _ in range(2):
        r = default.sample_actions(inputs, _gens(2), "random-mask")
        assert (r.actions - plain.actions).abs().max().item() < 1e-3
    # graphs captured with the compiled layer and replayed, not a silent fallback to either
    assert default.paths_run == {"graphs+compiled": 2} and not default.fallbacks, default.fallbacks
    assert default.layer_fn is not decoder_layer
    policy = AsyncVLAPolicy(model, tok, NormStats.identity(model.cfg.state_dim, model.cfg.action_dim))
    from envs.base import Observation

    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for c in model.cfg.cameras}
    policy.act([Observation(images, np.zeros(model.cfg.state_dim, np.float32), "go")], ["e@0"])
    assert policy.fast_path == "graphs+compiled" and policy.chunk_info["e@0"]["path"] == "graphs+compiled"


@pytest.mark.parametrize("mode", ["asyncvla", "random-mask"])
def test_a_batch_of_one_instruction_is_computed_as_each_sample_alone(tiny, mode):
    """Bit for bit on CPU: nothing in a chunk depends on its batch-mates when the prompts need no
    padding (a single state row and the rater's sigmoid once rounded differently alone)."""
    model, tok, fast = tiny
    rng = np.random.default_rng(2)
    cfg = model.cfg
    images = [
        {c: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras}
        for _ in range(5)
    ]
    states = rng.normal(size=(5, cfg.state_dim))
    pre = Preprocessor(cfg, tok)
    batch = fast.sample_actions(pre(images, [INSTRUCTIONS[1]] * 5, states), _gens(5), mode)
    if mode == "asyncvla":
        assert 0 < batch.mask.sum() < batch.mask.numel()  # the rater's threshold is exercised
    for i in range(5):
        alone = fast.sample_actions(
            pre(images[i : i + 1], [INSTRUCTIONS[1]], states[i : i + 1]), _gens(1, i), mode
        )
        for name in ("actions", "sfm", "confidence", "mask"):
            if getattr(alone, name) is not None:
                assert torch.equal(getattr(batch, name)[i : i + 1], getattr(alone, name)), (name, i)


def test_the_policy_answers_a_batch_exactly_as_each_observation_alone(tiny):
    """On CPU the policy runs one model call per instruction (prompts of different lengths are
    left-padded, and the padding changes the attention's order of summation in the last float32
    bits, which a long episode amplifies into another outcome): each observation's chunk is the
    one it gets alone."""
    from types import SimpleNamespace

    model, tok, _ = tiny
    policy = AsyncVLAPolicy(model, tok, NormStats.identity(model.cfg.state_dim, model.cfg.action_dim))
    rng = np.random.default_rng(1)
    instructions = [INSTRUCTIONS[0], INSTRUCTIONS[1], INSTRUCTIONS[0], INSTRUCTIONS[0], INSTRUCTIONS[1]]
    obs = [
        SimpleNamespace(
            images={c: rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for c in model.cfg.cameras},
            state=rng.normal(size=model.cfg.state_dim).astype(np.float32),
            instruction=instruction,
        )
        for instruction in instructions
    ]
    keys = [f"episode{i}@0" for i in range(len(obs))]
    calls = []
    sample = policy.sampler.sample_actions
    policy.sampler.sample_actions = lambda inputs, *a, **kw: (
        calls.append(len(inputs.input_ids)) or sample(inputs, *a, **kw)
    )
    batched = policy.act(obs, keys)
    assert policy.batch_invariant
    assert sorted(calls) == [2, 3]  # one call per instruction
    for i in range(len(obs)):
        assert np.array_equal(batched[i], policy.act([obs[i]], [keys[i]])[0]), i


def test_the_fast_path_follows_weights_changed_after_it_was_built():
    """A training loop evaluates its model between steps: an optimiser step (in place), a loaded
    state dict (in place) or a replaced parameter must reach the fast path's fused copies of q/k/v
    and gate/up; before, the copies kept the old values while o/down followed (issue 34, item 15)."""
    cfg = ModelConfig.named("tiny")
    tok = build_tiny_tokenizer(cfg.text.vocab_size)
    torch.manual_seed(0)
    model = AsyncVLA(cfg, tok).eval()
    fast = FastSampler(model)
    inputs = _inputs(cfg, tok, 2)
    before = fast.sample_actions(inputs, _gens(2), "sfm").actions
    attn, mlp = model.lm.layers[0].self_attn, model.lm.layers[-1].mlp
    with torch.no_grad():
        attn.q_proj.weight.add_(0.05)  # as an optimiser step does
    model.load_state_dict({k: v + 0.01 if "up_proj" in k else v for k, v in model.state_dict().items()})
    mlp.gate_proj.weight = torch.nn.Parameter(mlp.gate_proj.weight.detach() * 1.1)
    quick = fast.sample_actions(inputs, _gens(2), "sfm").actions
    assert torch.equal(quick, model.sample_actions(inputs, _gens(2), "sfm").actions)
    assert not torch.equal(quick, before)


@pytest.mark.parametrize("fast", [True, False])
def test_afm_inpaint_keeps_the_committed_actions_and_regenerates_the_rest(tiny, fast):
    """Asynchronous execution's afm-inpaint join: a request's committed actions come back unchanged,
    the other tokens are regenerated around them, and without committed actions the chunk is the
    asyncvla mode's; both inference paths compute the same inpainted chunk."""
    from envs.base import Observation

    model, tok, _ = tiny
    cfg = model.cfg
    policy = AsyncVLAPolicy(model, tok, NormStats.identity(cfg.state_dim, cfg.action_dim), fast=fast)
    rng = np.random.default_rng(3)
    images = {
        c: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras
    }
    obs = Observation(images, rng.normal(size=cfg.state_dim).astype(np.float32), INSTRUCTIONS[0])
    committed = rng.uniform(-1, 1, (3, cfg.action_dim)).astype(np.float32)
    free = policy.act([obs], ["e@4"])[0]
    inpainted = policy.act([dataclasses.replace(obs, committed=committed)], ["e@4"])[0]
    assert np.array_equal(inpainted[:3], committed)
    assert not np.allclose(inpainted[3:], free[3:])
    assert np.array_equal(policy.act([dataclasses.replace(obs, committed=committed[:0])], ["e@4"])[0], free)
    # the model keeps the committed tokens bit for bit in its own (normalised) units
    inputs = policy.preprocessor([images], [obs.instruction], obs.state[None])
    keep = torch.zeros(1, cfg.chunk_length)
    keep[0, :3] = 1
    full = torch.zeros(1, cfg.chunk_length, cfg.action_dim)
    full[0, :3] = torch.from_numpy(committed)
    eager = model.sample_actions(inputs, _gens(1), committed=full, keep=keep)
    quick = FastSampler(model).sample_actions(inputs, _gens(1), committed=full, keep=keep)
    assert torch.equal(eager.actions[0, :3], full[0, :3]) and torch.equal(eager.actions, quick.actions)
    assert eager.sfm is None and torch.equal(eager.mask[0], 1 - keep[0])


# -- fallbacks: only a failed compile or capture falls back, and the path taken is recorded ------
def _compile_failure():
    """What torch.compile raises when its backend fails (inductor's errors reach the caller so)."""
    return torch._dynamo.exc.BackendCompilerFailed(lambda: None, RuntimeError("injected"), None)


def _raising_compile(error):
    """A stand-in for torch.compile whose compiled function raises `error()` when called (the
    compile happens at the first call), and otherwise is the layer."""

    def compile_(fn, **kwargs):
        def compiled(*args):
            raise error()

        return compiled

    return compile_


def test_a_failed_compile_falls_back_to_the_uncompiled_layer_and_says_so(tiny, monkeypatch):
    model, tok, _ = tiny
    monkeypatch.setattr(torch, "compile", _raising_compile(_compile_failure))
    fused = FastSampler(model, graphs=False, fuse=True)
    assert fused.compiled
    inputs = _inputs(model.cfg, tok, 2)
    r = fused.sample_actions(inputs, _gens(2), "asyncvla")
    assert torch.equal(r.actions, model.sample_actions(inputs, _gens(2), "asyncvla").actions)
    assert fused.fast_path == "no graphs" and fused.paths_run == {"no graphs": 1}
    assert not fused.compiled
    assert len(fused.fallbacks) == 1 and "BackendCompilerFailed" in fused.fallbacks[0]


@pytest.mark.parametrize(
    "error",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory (injected)"),
        # dynamo wraps a backend's errors, an out-of-memory one during autotuning included
        lambda: torch._dynamo.exc.BackendCompilerFailed(
            lambda: None, torch.OutOfMemoryError("CUDA out of memory (injected)"), None
        ),
        lambda: TimeLimitExceeded("the harness's step time limit (injected)"),
    ],
    ids=["oom", "oom-inside-compile-error", "time-limit"],
)
def test_a_transient_error_or_a_time_limit_during_compile_is_not_taken_for_a_failed_compile(
    tiny, monkeypatch, error
):
    """Out of memory is transient and a time limit belongs to the caller: neither may switch the
    compiled layer off for the rest of the process nor be swallowed."""
    model, tok, _ = tiny
    monkeypatch.setattr(torch, "compile", _raising_compile(error))
    fused = FastSampler(model, graphs=False, fuse=True)
    with pytest.raises(type(error())):
        fused.sample_actions(_inputs(model.cfg, tok, 1), _gens(1), "sfm")
    assert fused.compiled and not fused.fallbacks and fused.fast_path is None


class _FakeCapture:
    """CUDA graph capture stood in for on CPU: it runs the function as the capture's warm-up does
    (so a compile happens inside it) and replays by calling it; `fail` makes it raise as a failed
    capture would."""

    fail: BaseException | None = None

    def __init__(self, fn, example_inputs):
        self.fn = fn
        fn(*example_inputs)
        if _FakeCapture.fail is not None:
            raise _FakeCapture.fail

    def __call__(self, *inputs):
        return self.fn(*inputs)


def _graphed_sampler(model, monkeypatch, fuse: bool, fail: BaseException | None = None) -> FastSampler:
    import asyncvla.fast.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "CapturedCall", _FakeCapture)
    monkeypatch.setattr(_FakeCapture, "fail", fail)
    sampler = FastSampler(model, graphs=False, fuse=fuse)
    sampler.graphs_enabled = True  # the graph path's logic, on CPU, with the capture stood in for
    return sampler


def test_the_graph_path_records_graphs_and_the_compiled_layer(tiny, monkeypatch):
    model, tok, _ = tiny
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: fn(*a))  # "compiles" fine
    sampler = _graphed_sampler(model, monkeypatch, fuse=True)
    inputs = _inputs(model.cfg, tok, 3)
    for _ in range(2):
        r = sampler.sample_actions(inputs, _gens(3), "asyncvla")
    assert sampler.paths_run == {"graphs+compiled": 2} and not sampler.fallbacks
    plain = FastSampler(model, graphs=False).sample_actions(inputs, _gens(3), "asyncvla")
    assert (r.actions - plain.actions).abs().max().item() < 1e-4  # padding reorders sums only


def test_a_compile_failing_inside_the_capture_falls_back_to_graphs_without_it(tiny, monkeypatch):
    model, tok, _ = tiny
    monkeypatch.setattr(torch, "compile", _raising_compile(_compile_failure))
    sampler = _graphed_sampler(model, monkeypatch, fuse=True)
    sampler.sample_actions(_inputs(model.cfg, tok, 2), _gens(2), "sfm")
    assert sampler.fast_path == "graphs" and not sampler.compiled
    assert len(sampler.fallbacks) == 1 and "compiled decoder layer failed" in sampler.fallbacks[0]


def test_a_failed_capture_runs_op_by_op_and_says_so(tiny, monkeypatch):
    model, tok, _ = tiny
    failure = RuntimeError("CUDA error: operation not permitted when stream is capturing (injected)")
    sampler = _graphed_sampler(model, monkeypatch, fuse=False, fail=failure)
    inputs = _inputs(model.cfg, tok, 2)
    sampler.sample_actions(inputs, _gens(2), "sfm")
    sampler.sample_actions(inputs, _gens(2), "sfm")  # the failed shape is not captured again
    assert sampler.paths_run == {"no graphs": 2}
    assert len(sampler.fallbacks) == 1 and "capture failed" in sampler.fallbacks[0]


@pytest.mark.parametrize(
    "failure",
    [torch.OutOfMemoryError("CUDA out of memory (injected)"), TimeLimitExceeded("(injected)")],
    ids=["oom", "time-limit"],
)
def test_out_of_memory_or_a_time_limit_during_capture_propagates(tiny, monkeypatch, failure):
    model, tok, _ = tiny
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: fn(*a))
    sampler = _graphed_sampler(model, monkeypatch, fuse=True, fail=failure)
    with pytest.raises(type(failure)):
        sampler.sample_actions(_inputs(model.cfg, tok, 1), _gens(1), "sfm")
    # nothing switched off: the next call may capture with the compiled layer
    assert sampler.compiled and not sampler.fallbacks and not sampler._graphs


def test_the_policy_names_its_inference_path(tiny):
    from envs.base import Observation

    model, tok, _ = tiny
    cfg = model.cfg
    stats = NormStats.identity(cfg.state_dim, cfg.action_dim)
    rng = np.random.default_rng(0)
    images = {
        c: rng.integers(0, 255, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras
    }
    obs = Observation(images, np.zeros(cfg.state_dim, np.float32), INSTRUCTIONS[0])
    fast, reference = AsyncVLAPolicy(model, tok, stats), AsyncVLAPolicy(model, tok, stats, fast=False)
    assert fast.fast_path is None  # nothing ran yet
    fast.act([obs], ["e@0"])
    reference.act([obs], ["e@0"])
    assert fast.fast_path == "no graphs" and fast.paths_run == {"no graphs": 1}
    assert fast.chunk_info["e@0"]["path"] == "no graphs"
    assert reference.fast_path == "reference" and reference.chunk_info["e@0"]["path"] == "reference"


def test_run_json_names_the_inference_path(tmp_path):
    """The harness records, per episode and in run.json, which path the checkpoint's chunks took."""
    from evalsuite import evaluate_suite

    out = tmp_path / "run"
    summary = evaluate_suite(
        "tabletop", checkpoint="demo", tasks=[0], episodes_per_task=1, max_steps=8, out=out
    )
    assert [r.info["inference_path"] for r in summary.records] == ["no graphs"]
    assert json.loads((out / "run.json").read_text())["inference_paths"] == {"no graphs": 1}
