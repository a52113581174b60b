"""The transcoder contract, checked: what every registered variant must do.

:func:`check_transcoder` ``(make, tmp_path)`` runs every check below on transcoders built by
``make(n_layers, d_in, d_sae, seed)`` (an inference transcoder with random, not
identity-like weights) and raises ``AssertionError`` naming the first broken promise:

1. ``registered``: the class is registered under ``cfg.architecture()``, with SAELens too.
2. ``causality``: the output at layer ``t`` depends on the input of layer ``l`` only if
   ``l ∈ sources(t)`` (or ``l == t``, a skip term), and never for ``l > t``.
3. ``decoder_pieces``: ``decoder_rows`` / ``decoder_block`` / ``decoder_norms`` /
   ``encoder_vectors`` / ``skip`` agree with ``decode`` and ``encode_layer_pre``.
4. ``sparse_decode``: ``decode_sparse`` equals ``decode``, values and gradients (with
   respect to the activations and the decoder).
5. ``saelens_round_trip``: ``save_model`` then the class's ``load_from_disk``,
   ``CrossLayerTranscoder.load_from_disk`` and ``sae_lens.SAE.load_from_disk`` give the same
   class and outputs.
6. ``circuit_tracer_round_trip``: where ``circuit_tracer_exportable()`` is ``None``, our
   export read by circuit-tracer's own ``load_clt`` (with the hooks ``config.yaml`` names)
   gives the same activations and outputs; otherwise the export is refused.
7. ``from_pretrained``: a local folder and an offline Hugging Face cache (the Hub layout)
   load through ``CrossLayerTranscoder.from_pretrained``, eagerly and lazily.
8. ``push_to_hub``: ``push_to_hub(out_dir=...)`` writes a folder that loads back as the
   same transcoder, with a model card.
9. ``training``: the registered training class trains a few steps through the runner,
   its inference result is the registered class, and a run resumed from a checkpoint
   ends at the same weights as an uninterrupted one.
10. ``feature_sharding``: where the training class says ``supports_feature_sharding``, its
    features split over two shards (as tensor-parallel training splits them) give exactly
    the unsharded init (each tensor's slice along its feature dimension), and with each
    shard's partial reconstruction completed by the other's (``shard_sum``) the same loss
    parts and the same gradients (the slices of the unsharded gradients).
11. ``attribution``: on a random model, every edge into every target (feature
    pre-activations and logits) from every node type (features, errors, embeddings) equals
    what injecting that source into the frozen model (attention patterns and norm scales
    at their clean values, MLP outputs replaced) moves the target by; with
    ``max_feature_nodes`` the kept features' rows are those of the full graph.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from sae_lens_clt import registry
from sae_lens_clt.testing.models import text_dataset, tiny_lm

Factory = Callable[..., Any]  # make(n_layers, d_in, d_sae, seed) -> transcoder
CHECKS = (
    "registered",
    "causality",
    "decoder_pieces",
    "sparse_decode",
    "saelens_round_trip",
    "circuit_tracer_round_trip",
    "from_pretrained",
    "push_to_hub",
    "training",
    "feature_sharding",
    "attribution",
)


def check_transcoder(
    make: Factory,
    tmp_path: str | Path,
    *,
    checks: tuple[str, ...] = CHECKS,
    n_layers: int = 3,
    d_model: int = 32,
    d_sae: int = 48,
) -> list[str]:
    """Run the checks of the module docstring; returns the names of those that ran."""
    tmp = Path(tmp_path)
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {CHECKS}")
    clt = make(n_layers=n_layers, d_in=d_model, d_sae=d_sae, seed=0)
    model = tiny_lm(n_layers=n_layers, d_model=d_model, seed=1)
    run = {
        "registered": lambda: check_registered(clt),
        "causality": lambda: check_causality(clt),
        "decoder_pieces": lambda: check_decoder_pieces(clt),
        "sparse_decode": lambda: check_sparse_decode(clt),
        "saelens_round_trip": lambda: check_saelens_round_trip(clt, tmp / "saelens"),
        "circuit_tracer_round_trip": lambda: check_circuit_tracer_round_trip(clt, tmp / "ct"),
        "from_pretrained": lambda: check_from_pretrained(clt, tmp / "pretrained"),
        "push_to_hub": lambda: check_push_to_hub(clt, tmp / "push"),
        "training": lambda: check_training(clt, model, tmp / "training"),
        "feature_sharding": lambda: check_feature_sharding(clt),
        "attribution": lambda: check_attribution(
            model, make(n_layers=n_layers, d_in=d_model, d_sae=d_sae, seed=2)
        ),
    }
    for name in checks:
        run[name]()
    return list(checks)


# ---------------------------------------------------------------------- helpers
def _inputs(clt: Any, n: int = 8, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, clt.cfg.n_layers, clt.cfg.d_in, generator=gen).to(clt.dtype)


def assert_same_transcoder(a: Any, b: Any, atol: float = 1e-5) -> None:
    """Same class, same activations and outputs on random inputs (and some are active)."""
    assert type(a) is type(b), f"loaded a {type(b).__name__}, saved a {type(a).__name__}"
    x = _inputs(a)
    with torch.no_grad():
        acts_a, acts_b = a.encode(x), b.encode(x)
        torch.testing.assert_close(acts_b, acts_a, atol=atol, rtol=atol)
        assert (acts_a != 0).any(), "no feature is active on random inputs: the check is vacuous"
        torch.testing.assert_close(b(x), a(x), atol=atol, rtol=atol)


@contextlib.contextmanager
def offline_hub_cache(cache: Path) -> Iterator[Path]:
    """Point ``huggingface_hub`` at an empty cache folder in offline mode (restored after)."""
    import huggingface_hub.constants as hf_constants

    saved = hf_constants.HF_HUB_CACHE, hf_constants.HF_HUB_OFFLINE
    cache.mkdir(parents=True, exist_ok=True)
    hf_constants.HF_HUB_CACHE, hf_constants.HF_HUB_OFFLINE = str(cache), True
    try:
        yield cache
    finally:
        hf_constants.HF_HUB_CACHE, hf_constants.HF_HUB_OFFLINE = saved


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path, subfolder: str = "") -> str:
    """Copy ``folder`` into the Hub cache layout ``models--org--repo/snapshots/<sha>/...``."""
    sha = f"{abs(hash((repo_id, subfolder))) % 16**40:040x}"
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / sha / subfolder
    snap.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(sha)
    return sha


# ---------------------------------------------------------------------- 1-4: the class
def check_registered(clt: Any) -> None:
    from sae_lens.registry import SAE_CLASS_REGISTRY

    arch = clt.cfg.architecture()
    reg = registry.registration(arch)
    assert reg.cls is type(clt), f"{arch!r} is registered to {reg.cls}, not {type(clt)}"
    assert SAE_CLASS_REGISTRY[arch][0] is type(clt), f"{arch!r} is not registered with SAELens"
    assert isinstance(clt, registry.Transcoder)


@torch.no_grad()
def check_causality(clt: Any) -> None:
    L = clt.cfg.n_layers
    x = _inputs(clt)
    base = clt(x)
    moved_somewhere = False
    for layer in range(L):
        bumped = x.clone()
        bumped[:, layer] += torch.randn_like(bumped[:, layer])
        out = clt(bumped)
        for t in range(L):
            changed = not torch.allclose(out[:, t], base[:, t], atol=1e-6, rtol=0)
            allowed = layer in clt.sources(t) or layer == t
            assert allowed or not changed, (
                f"the output at layer {t} moved when only the input of layer {layer} did; "
                f"sources({t}) = {list(clt.sources(t))}"
            )
            assert layer <= t or not changed, f"layer {layer} writes back to layer {t} < {layer}"
            moved_somewhere |= changed and t in clt.targets(layer)
    assert moved_somewhere, "no input moved any output: the transcoder is constant"


@torch.no_grad()
def check_decoder_pieces(clt: Any) -> None:
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    x = _inputs(clt, n=2)
    zero = torch.zeros(1, L, F, dtype=clt.dtype)
    base = clt.decode(zero, x[:1])  # [1, L, d_out]: biases and skip terms
    gen = torch.Generator().manual_seed(3)
    for s in range(L):
        targets = list(clt.targets(s))
        assert targets and targets[0] == s and targets == list(range(s, s + len(targets)))
        f = int(torch.randint(0, F, (1,), generator=gen))
        one = zero.clone()
        one[0, s, f] = 1.0
        written = clt.decode(one, x[:1])[0] - base[0]  # [L, d_out]
        rows = clt.decoder_rows(s, torch.tensor([f]))[0]  # [w_s, d_out]
        assert rows.shape[0] == len(targets), f"decoder_rows({s}) has {rows.shape[0]} targets"
        for t in range(L):
            expected = rows[t - s] if t in targets else torch.zeros_like(written[t])
            torch.testing.assert_close(written[t], expected, atol=1e-5, rtol=1e-5)
            if t in targets:
                torch.testing.assert_close(clt.decoder_block(s, t)[f], rows[t - s])
                assert s in clt.sources(t)
        norm = clt.decoder_norms()[s, f]
        torch.testing.assert_close(norm, rows.flatten().norm(), atol=1e-5, rtol=1e-5)
        vec = clt.encoder_vectors(torch.tensor([s]), torch.tensor([f]))[0]
        pre = clt.encode_layer_pre(x[:, s], s)[:, f] - clt.encode_layer_pre(0 * x[:, s], s)[:, f]
        torch.testing.assert_close(pre, x[:, s] @ vec, atol=1e-4, rtol=1e-4)
        # what decode adds without any feature is b_dec plus the skip term of the layer's input
        skip = clt.skip(x[:, s], s)
        no_features = clt.decode(zero.expand(2, -1, -1), x)[:, s] - clt.b_dec[s]
        expected = torch.zeros_like(no_features) if skip is None else skip
        torch.testing.assert_close(no_features, expected, atol=1e-5, rtol=1e-5)
        if skip is not None:  # linear in the layer's own input
            torch.testing.assert_close(clt.skip(2 * x[:, s], s), 2 * skip, atol=1e-5, rtol=1e-5)


def check_sparse_decode(clt: Any) -> None:
    x = _inputs(clt)
    with torch.no_grad():
        acts = clt.encode(x)
    assert (acts != 0).any() and (acts == 0).any(), "want a mix of active and inactive features"
    target = torch.randn(*x.shape[:-1], clt.cfg.d_out, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (clt.decode, clt.decode_sparse):
        clt.zero_grad()
        a = acts.clone().requires_grad_(True)
        ((fn(a, x) - target.to(clt.dtype)) ** 2).sum().backward()
        grads.append((a.grad * (acts != 0), [w.grad.clone() for w in clt.W_dec]))
        with torch.no_grad():
            out = fn(acts, x)
        grads[-1] += (out,)
    (ga_d, gw_d, out_d), (ga_s, gw_s, out_s) = grads
    torch.testing.assert_close(out_s, out_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ga_s, ga_d, atol=1e-4, rtol=1e-4)
    for a, b in zip(gw_s, gw_d, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    clt.zero_grad()


# ---------------------------------------------------------------------- 5-8: files
def check_saelens_round_trip(clt: Any, folder: Path) -> None:
    import sae_lens

    from sae_lens_clt.transcoders import CrossLayerTranscoder

    clt.save_model(folder)
    assert_same_transcoder(clt, type(clt).load_from_disk(folder))
    assert_same_transcoder(clt, CrossLayerTranscoder.load_from_disk(folder))
    assert_same_transcoder(clt, sae_lens.SAE.load_from_disk(folder))


def check_circuit_tracer_round_trip(clt: Any, folder: Path) -> None:
    import yaml

    from sae_lens_clt.formats.errors import CLTFormatError

    reason = clt.circuit_tracer_exportable()
    if reason is not None:
        try:
            clt.to_circuit_tracer(folder)
        except CLTFormatError:
            return
        raise AssertionError(f"to_circuit_tracer wrote a layout circuit-tracer misreads: {reason}")
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    clt.to_circuit_tracer(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    theirs = load_clt(
        str(folder),
        feature_input_hook=config["feature_input_hook"],
        feature_output_hook=config["feature_output_hook"],
        dtype=torch.float32,
        device=torch.device("cpu"),
        lazy_decoder=False,
    )
    x = _inputs(clt).float()  # ours: [n, L, d]; theirs: [L, n, d]
    with torch.no_grad():
        ours_acts, ours_out = clt.encode(x), clt(x)
        their_acts = theirs.encode(x.transpose(0, 1)).transpose(0, 1)
        their_out = theirs(x.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(their_acts, ours_acts.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(their_out, ours_out.float(), atol=1e-5, rtol=1e-5)


def check_from_pretrained(clt: Any, root: Path) -> None:
    from sae_lens_clt.transcoders import CrossLayerTranscoder

    folder = root / "local"
    clt.save_model(folder)
    for lazy in (False, True):
        assert_same_transcoder(clt, CrossLayerTranscoder.from_pretrained(str(folder), lazy=lazy))
    with offline_hub_cache(root / "hf_cache") as cache:
        put_in_hub_cache(cache, "contract/variant", folder, subfolder="run-1")
        loaded = CrossLayerTranscoder.from_pretrained("contract/variant/run-1")
        assert_same_transcoder(clt, loaded)
        assert_same_transcoder(clt, type(clt).from_pretrained("contract/variant/run-1", lazy=True))


def check_push_to_hub(clt: Any, folder: Path) -> None:
    from sae_lens_clt.publish import push_to_hub
    from sae_lens_clt.transcoders import CrossLayerTranscoder

    result = push_to_hub(clt, "contract/variant", out_dir=folder)
    assert (folder / "README.md").is_file()
    assert ("circuit_tracer" in result.layouts) == (clt.circuit_tracer_exportable() is None)
    assert_same_transcoder(clt, CrossLayerTranscoder.from_pretrained(str(folder)))


# ---------------------------------------------------------------------- 9: training
def variant_options(clt: Any) -> dict[str, Any]:
    """The config fields a variant adds to ``CrossLayerTranscoderConfig`` (for the runner)."""
    from sae_lens_clt.transcoders import CrossLayerTranscoderConfig

    base = {f.name for f in fields(CrossLayerTranscoderConfig)}
    return {f.name: getattr(clt.cfg, f.name) for f in fields(clt.cfg) if f.name not in base}


def check_training(clt: Any, model: Any, root: Path, steps: int = 8) -> None:
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig
    from sae_lens_clt.training.runner import CLTTrainingRunner

    reg = registry.registration(clt.cfg.architecture())
    assert reg.training_class is not None, f"{clt.cfg.architecture()!r} has no training class"
    data = text_dataset(200)

    def run(**overrides: Any) -> Any:
        cfg = CLTTrainingRunnerConfig(
            architecture=clt.cfg.architecture(),
            transcoder_options=variant_options(clt),
            d_sae=clt.cfg.d_sae,
            training_tokens=steps * 64,
            train_batch_size_tokens=64,
            context_size=32,
            store_batch_size_prompts=4,
            n_batches_for_norm_estimate=2,
            verbose=False,
            **overrides,
        )
        runner = CLTTrainingRunner(cfg, override_model=model, override_dataset=data)
        return runner, runner.run()

    runner, straight = run(checkpoint_path=str(root / "ckpt"), n_checkpoints=1)
    assert type(straight) is type(clt), f"training gave a {type(straight).__name__}"
    assert isinstance(runner.training_clt, reg.training_class)
    hist = runner.metrics_history
    assert hist and all(torch.isfinite(torch.tensor(m["loss"])) for m in hist)
    middle = sorted((root / "ckpt").glob("step_*"), key=lambda p: int(p.name[5:]))[0]
    _, resumed = run(resume_from_checkpoint=str(middle))
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{name} differs after resume")


# ---------------------------------------------------------------------- 10: sharding
def check_feature_sharding(clt: Any, n_shards: int = 2) -> None:
    from sae_lens_clt.training.checkpoints import feature_dims
    from sae_lens_clt.transcoders.clt import FeatureShard

    reg = registry.registration(clt.cfg.architecture())
    cls = reg.training_class
    if cls is None or not getattr(cls, "supports_feature_sharding", False):
        return
    F = clt.cfg.d_sae
    assert F % n_shards == 0, f"feature_sharding needs d_sae divisible by {n_shards}"
    cfg = reg.training_config_class.from_dict({**clt.cfg.to_dict(), "device": "cpu"})

    def build(d_sae: int, shard: FeatureShard | None) -> Any:
        torch.manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            m = cls(reg.training_config_class.from_dict({**cfg.to_dict(), "d_sae": d_sae}))
        m.reset_parameters(shard=shard) if shard is not None else m.reset_parameters()
        return m

    full = build(F, None)
    shards = [build(F // n_shards, FeatureShard.of(r, n_shards, F)) for r in range(n_shards)]
    dims = feature_dims(full)

    def part(t: torch.Tensor, name: str, r: int) -> torch.Tensor:
        dim = dims[name]
        return t if dim is None else t.narrow(dim, r * (F // n_shards), F // n_shards)

    for name, t in full.state_dict().items():
        for r, s in enumerate(shards):
            assert torch.equal(s.state_dict()[name], part(t, name, r)), (
                f"feature_sharding: shard {r}'s init of {name} is not the slice of the "
                "unsharded init (reset_parameters(shard=...))"
            )
    # random, not identity-like weights, the same in the shards
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in full.named_parameters():
            t.copy_(torch.randn(t.shape, generator=gen) * 0.3 + (0.2 if "threshold" in name else 0))
        for s_ in shards:
            for name, t in s_.named_parameters():
                t.copy_(part(full.state_dict()[name], name, shards.index(s_)))
    x = torch.randn(16, clt.cfg.n_layers, clt.cfg.d_in, generator=gen)
    y = torch.randn(16, clt.cfg.n_layers, clt.cfg.d_out, generator=gen)
    want = full.training_losses(x, y, 0.1)
    want.loss.backward()
    partials: list[torch.Tensor] = []
    for s_ in shards:
        s_.shard_sum = lambda p: partials.append(p.detach()) or p
        s_.training_losses(x, y, 0.1)
    sums: dict[str, float] = {}
    for r, s_ in enumerate(shards):
        others = sum(p for j, p in enumerate(partials) if j != r)
        s_.shard_sum = lambda p, o=others: p + o
        got = s_.training_losses(x, y, 0.1)
        got.loss.backward()
        for k, v in got.parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            if k == "mse_loss":
                torch.testing.assert_close(v, want.parts[k], msg="feature_sharding: mse differs")
        for name, p in s_.named_parameters():
            g = full.get_parameter(name).grad
            assert p.grad is not None and g is not None, f"feature_sharding: no gradient for {name}"
            torch.testing.assert_close(
                p.grad, part(g, name, r), rtol=1e-4, atol=1e-5,
                msg=f"feature_sharding: shard {r}'s gradient of {name} is not the slice",
            )  # fmt: skip
    for k, v in want.parts.items():
        if k != "mse_loss":
            assert abs(sums[k] - float(v)) <= 1e-4 * max(1.0, abs(float(v))), (
                f"feature_sharding: {k} over the shards is {sums[k]}, unsharded {float(v)}"
            )


# ---------------------------------------------------------------------- 11: attribution
def check_attribution(model: Any, clt: Any, n_feature_columns: int = 40) -> float:
    """Edges equal injections into the frozen model, for every node type; returns the
    largest error relative to the largest edge."""
    from sae_lens_clt.attribution.attribute import attribute, to_tokens, unembed_input_hook

    prompt = "the capital of the state containing the big river is"
    graph = attribute(model, clt, prompt, batch_size=32)
    assert graph.n_features >= 5, f"only {graph.n_features} active features: the check is vacuous"
    tokens = to_tokens(model, prompt)
    with torch.no_grad():
        ref = _clean_reference(model, clt, tokens)
        gen = torch.Generator().manual_seed(0)
        features = torch.randperm(graph.n_features, generator=gen)[:n_feature_columns]
        columns = torch.cat(
            [features, torch.arange(graph.error_offset, graph.logit_offset)]  # + errors, embeddings
        )
        worst = 0.0
        for chunk in columns.split(32):
            moved = _injected_targets(model, clt, ref, graph, chunk, unembed_input_hook(model))
            rows = torch.cat(
                [torch.arange(graph.n_features), torch.arange(graph.logit_offset, graph.n_nodes)]
            )
            expected = graph.adjacency[rows][:, chunk]
            scale = max(graph.adjacency.abs().max().item(), 1e-6)
            err = (moved - expected).abs().max().item() / scale
            assert err < 1e-4, f"an edge differs from its intervention by {err:.2e} (relative)"
            worst = max(worst, err)
    _check_ranked_subgraph(model, clt, prompt, graph)
    return worst


def _check_ranked_subgraph(model: Any, clt: Any, prompt: str, full: Any) -> None:
    """With ``max_feature_nodes`` the kept features' rows equal the full graph's."""
    from sae_lens_clt.attribution.attribute import attribute

    n_keep = max(1, full.n_features // 3)
    part = attribute(model, clt, prompt, max_feature_nodes=n_keep, batch_size=8, update_interval=1)
    assert part.n_features == n_keep
    index = {tuple(r): i for i, r in enumerate(full.active_features.tolist())}
    idx = torch.tensor([index[tuple(r)] for r in part.active_features.tolist()])
    cols = torch.cat([idx, torch.arange(full.n_features, full.n_nodes)])
    rows = torch.cat([idx, torch.arange(full.logit_offset, full.n_nodes)])
    part_rows = torch.cat([torch.arange(n_keep), torch.arange(part.logit_offset, part.n_nodes)])
    scale = max(full.adjacency.abs().max().item(), 1e-6)
    torch.testing.assert_close(
        part.adjacency[part_rows], full.adjacency[rows][:, cols], atol=1e-5 * scale, rtol=1e-5
    )


def _clean_reference(model: Any, clt: Any, tokens: torch.Tensor) -> dict[str, Any]:
    L = clt.cfg.n_layers
    _, cache = model.run_with_cache(tokens[None].to(model.cfg.device))
    frozen = {n: v for n, v in cache.items() if n.endswith(("hook_pattern", "hook_scale"))}
    x = torch.stack([cache[clt.cfg.hook_in(s)][0] for s in range(L)], 1).to(clt.dtype)  # [T, L, d]
    y = torch.stack([cache[clt.cfg.hook_out(s)][0] for s in range(L)], 1).to(clt.dtype)
    acts = clt.encode(x)
    acts[0] = 0  # BOS is not explained
    errors = y - clt.decode(acts, x)
    errors[0] = 0
    return {"tokens": tokens, "frozen": frozen, "x": x, "y": y, "errors": errors, "acts": acts}


def _source_vectors(model: Any, clt: Any, ref: dict, graph: Any, columns: torch.Tensor):
    """What each source column writes: MLP outputs ``[K, T, L, d_out]`` and embeddings
    ``[K, T, d_model]``, from ``decode`` itself (one-hot activations)."""
    T, L, F = graph.n_pos, clt.cfg.n_layers, clt.cfg.d_sae
    K = columns.numel()
    out = torch.zeros(K, T, L, clt.cfg.d_out, dtype=clt.dtype)
    embed = torch.zeros(K, T, model.cfg.d_model)
    zero = clt.decode(torch.zeros(1, L, F, dtype=clt.dtype), ref["x"][:1])[0]
    for k, col in enumerate(columns.tolist()):
        kind = graph.node_kind(col)
        if kind == "feature":
            s, p, f = graph.active_features[col].tolist()
            one = torch.zeros(1, L, F, dtype=clt.dtype)
            one[0, s, f] = graph.activation_values[col]
            out[k, p] = clt.decode(one, ref["x"][:1])[0] - zero
        elif kind == "error":
            s, p = graph.node_layer_pos(col)
            out[k, p, s] = ref["errors"][p, s]
        else:
            p = col - graph.embedding_offset
            embed[k, p] = model.W_E[ref["tokens"][p]]
            if getattr(model.cfg, "positional_embedding_type", "standard") == "standard":
                embed[k, p] += model.W_pos[p]
    return out, embed


def _injected_targets(
    model: Any, clt: Any, ref: dict, graph: Any, columns: torch.Tensor, unembed_in: str
) -> torch.Tensor:
    """How much each target moves ``[n_targets, K]`` when each source is injected into the
    frozen model (patterns and norm scales clamped, MLP outputs = clean + injection)."""
    L = clt.cfg.n_layers
    out, embed = _source_vectors(model, clt, ref, graph, columns)
    out = torch.cat([torch.zeros_like(out[:1]), out])  # row 0: nothing injected
    embed = torch.cat([torch.zeros_like(embed[:1]), embed])
    K = out.shape[0]
    seen: dict[str, torch.Tensor] = {}

    def freeze(act: torch.Tensor, hook: Any) -> torch.Tensor:
        clean = ref["frozen"][hook.name]
        if clean.shape[0] != act.shape[0]:
            return clean.repeat(act.shape[0] // clean.shape[0], *([1] * (clean.ndim - 1)))
        return clean

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen[hook.name] = act
        return act

    acts = ref["acts"][None].expand(K, -1, -1, -1)  # [K, T, L, F], frozen at clean values
    clean = clt.decode(ref["acts"], ref["x"])  # [T, L, d_out]

    def mlp_out(act: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        # the replacement MLP with every feature frozen at its clean value: whatever else
        # decode reads of the current input (a skip term) follows it
        new = ref["y"][:, layer] + out[:, :, layer]
        x_now = ref["x"][None].repeat(K, 1, 1, 1)  # [K, T, L, d_in]
        x_now[:, :, layer] = seen[clt.cfg.hook_in(layer)].to(clt.dtype)
        drift = clt.decode(acts, x_now)[:, :, layer] - clean[:, layer]
        return (new + drift).to(act.dtype)

    hooks: list[tuple[str, Any]] = [(n, freeze) for n in ref["frozen"]]
    hooks.append(("hook_embed", lambda a, hook: a + embed.to(a.dtype)))
    for s in range(L):
        hooks.append((clt.cfg.hook_in(s), keep))
        hooks.append((clt.cfg.hook_out(s), lambda a, hook, s=s: mlp_out(a, hook, s)))
    hooks.append((unembed_in, keep))
    model.run_with_hooks(ref["tokens"][None].expand(K, -1), fwd_hooks=hooks)
    last = seen[unembed_in][:, -1].float() @ model.W_U.float() + model.b_U.float()  # pre-softcap
    logits = last[:, graph.logit_token_ids] - last.mean(-1, keepdim=True)
    layers, pos, feats = graph.active_features.unbind(1)
    pre = torch.stack(
        [
            clt.encode_layer_pre(seen[clt.cfg.hook_in(s)][:, p].to(clt.dtype), s)[:, f]
            for s, p, f in zip(layers.tolist(), pos.tolist(), feats.tolist(), strict=True)
        ],
        1,
    ).float()  # [K, n_features]
    targets = torch.cat([pre, logits], 1)
    return (targets[1:] - targets[0]).T
