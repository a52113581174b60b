"""Generation with feature interventions (``sae_lens_clt.attribution.generate``).

1. Equal to circuit-tracer 0.5's ``feature_intervention_generate`` (KV-cached, frozen and
   open attention) on tiny random models with non-identity norms and a CLT exported with
   ``to_circuit_tracer`` and loaded with circuit-tracer's own loader: same token ids, logits
   and activations to float tolerance (1e-4; measured ~1e-6: the KV cache against full
   re-runs). Its open-attention path counts prompt positions with
   ``len(tokenizer(prompt).input_ids)`` (tensor prompts: ``inputs.size(0)``, 1 for the
   ``[1, T]`` its ``generate`` needs), so the comparison uses string prompts and a tokenizer
   that adds BOS itself; its open-ended slices all start at the first generated token.
2. No interventions: the model's own greedy generation (``model.generate``), both ``mlps``.
3. Every step equals :func:`intervene` on the sequence so far (open attention), both ``mlps``.
4. Sampling reproducible with a seed; open-ended interventions reach generated positions,
   constant ones do not; bad input is refused with a clear error.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sae_lens_clt.attribution import attribute, intervene
from sae_lens_clt.attribution.generate import generate
from tests.architectures import build

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


def bos_tokenizer() -> Any:
    """The toy word-level tokenizer (``tests.test_attribution.toy_tokenizer``) that also
    prepends BOS when called directly, as Gemma's and Llama's do: circuit-tracer's unfrozen
    path counts positions with ``len(tokenizer(prompt).input_ids)``, so without it the count
    misses BOS and circuit-tracer indexes out of range."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<unk>"] + [f"w{i}" for i in range(98)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", pad_token="<bos>",
        unk_token="<unk>", add_bos_token=True, name_or_path="toy-bos",
    )  # fmt: skip


def family(name: str = "gpt2"):
    fam = build(name, tokenizer=bos_tokenizer())
    text = " ".join(f"w{int(t) - 2}" for t in fam.prompt[1:])
    assert fam.model.to_tokens(text)[0].tolist() == fam.prompt.tolist()  # one BOS
    return fam, text


def steering(fam) -> list:
    """A constant ablation of the strongest feature, an open-ended 5× steer of the second
    (from its position on) and an open-ended steer on the generated positions only."""
    graph = attribute(fam.model, fam.clt, fam.prompt)
    order = graph.activation_values.argsort(descending=True)
    (l0, p0, f0), (l1, p1, f1), (l2, _, f2) = graph.active_features[order[:3]].tolist()
    T0 = fam.prompt.numel()
    return [
        (l0, p0, f0, 0.0),
        (l1, slice(p1, None), f1, 5.0 * float(graph.activation_values[order[1]])),
        (l2, slice(T0, None), f2, 3.0 * float(graph.activation_values[order[2]])),
    ]


def expand(todo: list, T: int) -> dict:
    """``{(layer, position, feature): value}`` over the first ``T`` positions, last wins."""
    out = {}
    for layer, pos, feat, value in todo:
        for p in range(T)[pos] if isinstance(pos, slice) else [pos]:
            out[(layer, p, feat)] = value
    return out


@pytest.mark.parametrize("freeze_attention", [True, False], ids=["frozen", "open"])
@pytest.mark.parametrize("name", ["gpt2", "llama3", "gemma2"])
def test_equals_circuit_tracer(name: str, freeze_attention: bool, tmp_path) -> None:
    from tests.test_architectures import circuit_tracer_model

    fam, text = family(name)
    fam.clt.to_circuit_tracer(tmp_path / "clt")
    rm = circuit_tracer_model(fam.model, tmp_path / "clt")
    todo, n = steering(fam), 6
    ours = generate(
        fam.model, fam.clt, text, todo, max_new_tokens=n, freeze_attention=freeze_attention
    )
    gen, their_logits, their_acts = rm.feature_intervention_generate(
        text, todo, freeze_attention=freeze_attention, max_new_tokens=n, do_sample=False,
        stop_at_eos=False, verbose=False,
    )  # fmt: skip
    base = generate(fam.model, fam.clt, text, [], max_new_tokens=n)
    assert (ours.logits - base.logits).abs().max() > 1e-2  # the interventions do something
    assert torch.equal(ours.new_tokens, their_logits.argmax(-1))
    assert fam.model.to_tokens(gen)[0, -n:].tolist() == ours.new_tokens.tolist()
    torch.testing.assert_close(ours.logits, their_logits, atol=1e-4, rtol=1e-4)
    # circuit-tracer reports the intervened features' own activations as computed, we report
    # the values they were set to; every other activation must agree (BOS aside)
    assert ours.activations.shape == their_acts.shape == (3, fam.prompt.numel() + n - 1, 64)
    # (steering() overlaps on purpose: a repeated (layer, position, feature) keeps the last
    # value, as in circuit-tracer)
    ours_acts = ours.activations.clone()
    for (layer, p, feat), value in expand(todo, ours_acts.shape[1]).items():
        assert ours_acts[layer, p, feat] == value
        ours_acts[layer, p, feat] = their_acts[layer, p, feat]
    torch.testing.assert_close(ours_acts[:, 1:], their_acts[:, 1:], atol=1e-4, rtol=1e-4)


def test_circuit_tracer_open_ended_slices_start_at_the_first_new_token(tmp_path) -> None:
    """circuit-tracer applies ``slice(a, None)`` with ``a`` past the prompt at every
    generated position: ours equals it with ``"new"`` (and differs with ``a``, which we honour)."""
    from tests.test_architectures import circuit_tracer_model

    fam, text = family()
    fam.clt.to_circuit_tracer(tmp_path / "clt")
    rm = circuit_tracer_model(fam.model, tmp_path / "clt")
    layer, _, feat, value = steering(fam)[2]
    T0, n = fam.prompt.numel(), 6
    late = [(layer, slice(T0 + 2, None), feat, value)]
    _, their_logits, _ = rm.feature_intervention_generate(
        text, late, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False
    )
    new = generate(fam.model, fam.clt, text, [(layer, "new", feat, value)], max_new_tokens=n)
    ours = generate(fam.model, fam.clt, text, late, max_new_tokens=n)
    torch.testing.assert_close(new.logits, their_logits, atol=1e-4, rtol=1e-4)
    assert (ours.logits[1] - their_logits[1]).abs().max() > 1e-3


@pytest.mark.parametrize("mlps", ["model", "replacement"])
def test_no_interventions_is_the_models_greedy_generation(mlps: str) -> None:
    fam, text = family()
    n = 8
    ours = generate(fam.model, fam.clt, text, [], max_new_tokens=n, mlps=mlps)
    theirs = fam.model.generate(
        fam.prompt[None], max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False
    )[0].clone()  # out of inference mode
    assert torch.equal(ours.tokens, theirs)
    assert ours.text == fam.model.tokenizer.decode(theirs[-n:].tolist())
    for k in range(n):  # the logits each token was chosen from
        with torch.no_grad():
            expected = fam.model(theirs[None, : fam.prompt.numel() + k])[0, -1]
        torch.testing.assert_close(ours.logits[k], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mlps", ["model", "replacement"])
def test_each_step_is_intervene_on_the_sequence_so_far(mlps: str) -> None:
    """With open attention, step ``k`` is :func:`intervene` on the prompt plus the first
    ``k`` generated tokens, with every open-ended intervention expanded to the positions
    that exist (``mlps="replacement"``: the replacement model with a clean error term)."""
    fam, text = family()
    todo, n = steering(fam), 4
    ours = generate(
        fam.model, fam.clt, text, todo, max_new_tokens=n, freeze_attention=False, mlps=mlps
    )
    T0 = fam.prompt.numel()
    for k in range(n):
        T = T0 + k
        # deduplicated: intervene(mlps="model") adds one delta per listed intervention
        expanded = [(lay, p, f, v) for (lay, p, f), v in expand(todo, T).items()]
        ref = intervene(
            fam.model, fam.clt, ours.tokens[:T], expanded, freeze_attention=False, mlps=mlps
        )
        torch.testing.assert_close(ours.logits[k], ref.logits[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.activations, ref.activations, atol=1e-4, rtol=1e-4)


def test_sampling_is_reproducible() -> None:
    fam, text = family()
    kw = dict(max_new_tokens=12, do_sample=True, temperature=3.0)
    todo = steering(fam)
    a = generate(fam.model, fam.clt, text, todo, seed=1, **kw)
    b = generate(fam.model, fam.clt, text, todo, seed=1, **kw)
    assert torch.equal(a.tokens, b.tokens) and a.text == b.text
    others = {tuple(generate(fam.model, fam.clt, text, todo, seed=s, **kw).new_tokens.tolist())
              for s in range(2, 6)}  # fmt: skip
    assert len(others | {tuple(a.new_tokens.tolist())}) > 1  # the seed matters
    greedy = generate(fam.model, fam.clt, text, todo, max_new_tokens=12)
    top1 = generate(fam.model, fam.clt, text, todo, seed=3, top_k=1, **kw)
    assert torch.equal(top1.tokens, greedy.tokens)  # top_k=1 sampling is greedy
    # the logits are those of the tokens chosen, whatever the sampling (open attention: a
    # longer prompt would freeze more rows; steering()'s positions are absolute)
    sampled = generate(fam.model, fam.clt, text, todo, seed=1, freeze_attention=False, **kw)
    replay = generate(fam.model, fam.clt, sampled.tokens[:-1], todo, max_new_tokens=1,
                      freeze_attention=False)  # fmt: skip
    torch.testing.assert_close(replay.logits[0], sampled.logits[-1], atol=1e-4, rtol=1e-4)


def test_open_ended_reaches_new_positions_constant_does_not() -> None:
    """Ablating a feature from position 1 on (open-ended) sets it to zero at every generated
    position and changes the continuation; the same ablation at position 1 only (constant)
    leaves it active at the generated positions."""
    fam, text = family()
    n, T0 = 8, fam.prompt.numel()
    base = generate(fam.model, fam.clt, text, [], max_new_tokens=n)
    new_acts = base.activations[:, T0:]  # [L, n - 1, F]
    # the feature most active over the generated positions of the clean run
    total = new_acts.sum(1)  # [L, F]
    layer, feat = divmod(int(total.argmax()), total.shape[1])
    assert (new_acts[layer, :, feat] > 0).sum() >= 2
    steer = -20.0 * float(new_acts[layer, :, feat].max())
    open_ = generate(fam.model, fam.clt, text, [(layer, slice(1, None), feat, steer)],
                     max_new_tokens=n)  # fmt: skip
    const = generate(fam.model, fam.clt, text, [(layer, 1, feat, steer)], max_new_tokens=n)
    assert (open_.activations[layer, 1:, feat] == steer).all()
    assert not torch.equal(open_.new_tokens, base.new_tokens)
    assert const.activations[layer, 1, feat] == steer
    assert (const.activations[layer, T0:, feat] != steer).all()
    assert (const.activations[layer, T0:, feat] > 0).sum() >= 2  # still fires where it did
    # a marker is the same as its slice
    new = generate(fam.model, fam.clt, text, [(layer, "new", feat, steer)], max_new_tokens=n)
    sl = generate(fam.model, fam.clt, text, [(layer, slice(T0, None), feat, steer)],
                  max_new_tokens=n)  # fmt: skip
    assert torch.equal(new.tokens, sl.tokens) and torch.equal(new.logits, sl.logits)
    # a constant int may name a generated position: set there only
    one = generate(fam.model, fam.clt, text, [(layer, T0 + 1, feat, steer)], max_new_tokens=n)
    assert torch.equal(one.tokens[: T0 + 2], base.tokens[: T0 + 2])
    assert (one.activations[layer, :, feat] == steer).nonzero().flatten().tolist() == [T0 + 1]


def test_bad_input_is_refused() -> None:
    fam, text = family()
    m, c, T0 = fam.model, fam.clt, fam.prompt.numel()
    cases = [
        (dict(interventions=[(0, 1, 3)]), "is \\(layer, position, feature, value\\)"),
        (dict(interventions=[(3, 1, 3, 0.0)]), "out of range"),
        (dict(interventions=[(0, 1, 64, 0.0)]), "out of range"),
        (dict(interventions=[(0, T0 + 4, 3, 0.0)], max_new_tokens=4), "position out of range"),
        (dict(interventions=[(0, -T0 - 1, 3, 0.0)]), "position out of range"),
        (dict(interventions=[(0, "later", 3, 0.0)]), "marker"),
        (dict(interventions=[(0, slice(0, None, 2), 3, 0.0)]), "step"),
        (dict(interventions=[(0, slice(4, 2), 3, 0.0)]), "selects no position"),
        (dict(interventions=[(0, 1.5, 3, 0.0)]), "must be an int"),
        (dict(interventions=[(0, 1, 3, float("nan"))]), "finite"),
        (dict(interventions=(0, 1, 3, 0.0)), "list of"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=64), "context"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(do_sample=True, top_k=0), "top_k"),
        (dict(mlps="clt"), "mlps"),
    ]
    for kw, match in cases:
        kw = {"interventions": [], **kw}
        with pytest.raises(ValueError, match=match):
            generate(m, c, text, **kw)
    m.tokenizer, tok = None, m.tokenizer
    try:
        with pytest.raises(ValueError, match="stop_at_eos needs"):
            generate(m, c, fam.prompt, [], stop_at_eos=True)
        out = generate(m, c, fam.prompt, [], max_new_tokens=2)  # token ids, no tokenizer
        assert out.text is None and out.new_tokens.shape == (2,)
    finally:
        m.tokenizer = tok


def test_stop_at_eos() -> None:
    """Generation stops at the first EOS (here the second token of the greedy continuation,
    made EOS for the test)."""
    fam, text = family()
    tok = fam.model.tokenizer
    base = generate(fam.model, fam.clt, text, [], max_new_tokens=6)
    second = int(base.new_tokens[1])
    assert second not in base.new_tokens[:1].tolist()
    eos_before = tok.eos_token
    tok.eos_token = tok.convert_ids_to_tokens(second)
    try:
        out = generate(fam.model, fam.clt, text, [], max_new_tokens=6, stop_at_eos=True)
    finally:
        tok.eos_token = eos_before
    assert torch.equal(out.new_tokens, base.new_tokens[:2]) and out.logits.shape[0] == 2
    torch.testing.assert_close(out.logits, base.logits[:2])


def test_shipped_model_texas_to_california() -> None:
    """The shipped model and CLT: setting, from " Dallas" on, the features that differ on
    " San Jose" to their values there turns the generated answer " Austin" into
    " Sacramento" (both ``mlps``)."""
    from sae_lens_clt.cli.demo import PROMPT, SOURCE_CITY, TARGET_CITY, load_default

    try:
        model, clt, *_ = load_default(None)
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
        pytest.skip(f"default model not available: {e}")
    prompt = PROMPT.format(city=SOURCE_CITY)
    ours = intervene(model, clt, prompt, []).clean_activations  # [L, T, F]
    theirs = intervene(model, clt, PROMPT.format(city=TARGET_CITY), []).clean_activations
    city = model.to_str_tokens(prompt).index(" " + SOURCE_CITY)
    swap = [
        (layer, pos, f, float(theirs[layer, pos, f]))
        for layer in range(clt.cfg.n_layers)
        for pos in range(city, ours.shape[1])
        for f in (ours[layer, pos] != theirs[layer, pos]).nonzero()[:, 0].tolist()
    ]
    for mlps in ("model", "replacement"):
        base = generate(model, clt, prompt, [], max_new_tokens=3, mlps=mlps)
        steered = generate(model, clt, prompt, swap, max_new_tokens=3, mlps=mlps)
        assert base.text.startswith(" Austin"), base.text
        assert steered.text.startswith(" Sacramento"), steered.text


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_device_and_dtype(device: str, dtype: torch.dtype) -> None:
    """Everything stays on the model's device and dtype; fp32 on CUDA equals CPU; seeded
    sampling is reproducible there too; bf16 agrees with fp32 on the greedy continuation's
    first token."""
    fam, text = family()
    todo = steering(fam)
    cpu = generate(fam.model, fam.clt, text, todo, max_new_tokens=5)
    model, clt = fam.model.to(device), fam.clt.to(device)
    if dtype != torch.float32:
        model, clt = model.to(dtype), clt.to(dtype)
    for mlps in ("model", "replacement"):
        out = generate(model, clt, text, todo, max_new_tokens=5, do_sample=True, seed=0, mlps=mlps)
        assert out.tokens.device.type == device and out.logits.dtype == dtype
        assert out.activations.device.type == device and out.activations.dtype == dtype
        again = generate(
            model, clt, text, todo, max_new_tokens=5, do_sample=True, seed=0, mlps=mlps
        )
        assert torch.equal(out.tokens, again.tokens)
    greedy = generate(model, clt, text, todo, max_new_tokens=5)
    if dtype == torch.float32:
        assert torch.equal(greedy.tokens.cpu(), cpu.tokens)
        torch.testing.assert_close(greedy.logits.cpu(), cpu.logits, atol=1e-3, rtol=1e-3)
    else:
        assert greedy.new_tokens[0].cpu() == cpu.new_tokens[0]
