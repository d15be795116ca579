"""The fast inference path: `asyncvla.model`'s model and maths, run without per-step host work.

`AsyncVLA.sample_actions` is the readable reference: every suffix step goes through
transformers' text model (output capturing, deprecation wrappers, config look-ups), rebuilds
the positions, rotary embedding and attention mask, and grows then crops a `DynamicCache`. None
of that changes within a chunk, and on a GPU the host time it costs (about 1,500 kernel
launches a step) is most of the chunk. `sampler.FastSampler` computes the same chunk through the
same `asyncvla.model.sample_chunk` (Alg. 1 is written once) with:

- `layers`: the decoder layer as a plain function of its weights (transformers' operations with
  SDPA, in the same order, so the CPU result is bit-identical; tests/test_fast.py holds it to
  that), against a static KV buffer per layer: the prefix written once per chunk, already
  repeated for grouped-query attention, the action tokens' slot overwritten at every step;
- `vision`: the vision tower with its host work (window order, rotary tables, segment lengths)
  computed once per image grid, so that it can run inside a CUDA graph;
- `graphs`: on CUDA, the whole chunk (prefix, SFM, rater, AFM) captured as a CUDA graph per
  (mode, batch bucket, prefix-length bucket) and replayed; a batch is padded to its bucket with
  copies of its last row and the prompt left-padded to a multiple of 32 tokens, so that a
  handful of graphs serve any batch. With graphs the decoder layer is also compiled by
  `torch.compile` once per shape and reused by all layers (fusing the small element-wise
  kernels). A compile that fails falls back to the uncompiled layer, and a capture that fails
  to running op by op, each with a warning; only what a failed compile or capture raises is
  caught (an out-of-memory error or a time limit propagates), and the path each call took is
  recorded (`FastSampler.fast_path`, `paths_run`, `fallbacks`; the policy's `fast_path`, run.json's
  `inference_paths`, the benchmark's `fast_path` columns), so a fallback is visible.

The suffix's embedding (`embed_suffix`), the velocity head and the Euler step are the model's,
called, not copied. Host synchronisations left in a chunk: on CUDA none between the prefix and
the result (AFM always runs; with no token masked it returns SFM's values unchanged); the
vision plan and the rope positions are host work, and the result is copied to the host once.
"""
