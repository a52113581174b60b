"""Where a CLT's training activations come from: the live multi-hook store or a disk cache.

- :mod:`.live`: SAELens' multi-hook ``ActivationsStore`` over the MLP input and output hooks
  of every layer (one model pass gives ``x [N, L, d_in]`` and ``y [N, L, d_out]``);
- :mod:`.cache`: the multi-hook activation cache on disk (sharded safetensors), its
  resumable builder and its memory-mapped, shuffled reader.
"""
