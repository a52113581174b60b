"""File formats of transcoders: one module per layout, plus the shared readers and writers.

Every loader here returns plain data (a config dict and a state dict); the transcoder
class builds itself from them (as SAELens' converters do), so nothing in this package
imports a transcoder class.

- :mod:`.errors`: :class:`CLTFormatError`, raised for every malformed file.
- :mod:`.atomic`: the one atomic writer (temp file + rename), for files and folders.
- :mod:`.safetensors`: the one safetensors reader (header, whole tensors, row ranges).
- :mod:`.saelens`: the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``).
- :mod:`.circuit_tracer`: circuit-tracer's layout (``W_enc_{i}`` / ``W_dec_{i}`` + ``config.yaml``).
- :mod:`.gemma_scope_2`: the Gemma Scope 2 CLT layout.
- :mod:`.lazy`: a decoder left on disk, read row by row.
- :mod:`.folder`: which layout a folder holds, and reading any of them.
"""
