"""Automatic supernodes: the features that play one role across a family of prompts.

A prompt family is ``P`` prompts of one template (e.g. "The capital of the state containing
{city} is" over 150 cities), each in a *group* (the city's state), read at one *role
position* (e.g. the last token). A supernode is a set of ``(layer, feature)`` that plays one
part there: "Texas", "say Austin", "say a capital".

Algorithm:

1. **Activations** (:func:`role_activations`): the CLT's activations of every prompt at the
   role position, ``acts [P, L, F]`` (prompts of one length run as one batch).
2. **Co-activation**: for a group ``g``, ``in_share`` is the fraction of ``g``'s prompts in
   which a feature is active and ``out_share`` the fraction of the other prompts. A feature
   is *selective* for ``g`` when ``in_share >= min_in`` and ``out_share <= max_out``; it is
   *shared* when it is active on at least ``min_shared`` of all prompts.
3. **Promoted tokens**: a feature's direct logit effect ``Σ_t W_dec[s -> t] W_U`` as
   z-scores over the vocabulary (the feature dashboards' convention: the final norm's
   centring, scale and weight are left out, so this ranks tokens approximately). Each selective feature of ``g`` joins the supernode of the
   group's role token (e.g. ``{"Texas": " Texas", "say Austin": " Austin"}``) that it
   promotes most, if that z-score is at least ``min_z``; otherwise the group's remainder
   supernode (``"<g> (other)"``).
4. **Shared features**: one that promotes at least ``min_role_tokens`` of the groups'
   tokens of a role joins "say a <role>" (e.g. "say a capital"); the rest are grouped
   greedily by the cosine similarity of their (summed) decoder vectors (``>= min_cosine``
   joins a group). Every supernode records the mean pairwise decoder cosine of its members
   as evidence.
5. **Names**: the role-token name; for shared groups the most common feature label (the
   labels of :mod:`sae_lens_clt.labels`) or the most promoted token.

Each :class:`Supernode` keeps its evidence (shares, z-scores, mean activations on its
group's prompts); :mod:`sae_lens_clt.circuits.supernode_graph` validates them by ablation,
collapses a graph onto them, and writes them into the graph JSON.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.inputs import Prompt, check_compatible, to_tokens
from sae_lens_clt.registry import Transcoder

Feature = tuple[int, int]  # (layer, feature)


@dataclass
class Supernode:
    """A named set of features with one role at one position of a prompt family."""

    name: str
    features: list[Feature]
    kind: str  # "group token" | "group" | "shared"
    group: str | None = None  # the prompt group it is selective for
    role: str | None = None  # the role token's role (e.g. "state", "capital")
    token: str | None = None  # the role token it promotes (group-token supernodes)
    in_share: list[float] = field(default_factory=list)  # per feature
    out_share: list[float] = field(default_factory=list)  # per feature
    mean_activation: list[float] = field(default_factory=list)  # over the group's prompts
    promoted_z: list[float] = field(default_factory=list)  # z-score of `token` per feature
    decoder_cosine: float = 1.0  # mean pairwise cosine of the members' decoder vectors

    def interventions(
        self, position: int, *, value: float | None = 0.0, scale: float = 1.0
    ) -> list[tuple[int, int, int, float]]:
        """``(layer, position, feature, value)`` for :func:`sae_lens_clt.intervene`:
        ``value`` for every member (0 ablates), or with ``value=None`` each member's mean
        activation on its group's prompts times ``scale`` (steering towards the group)."""
        if value is None:
            return [
                (layer, position, feat, scale * mean)
                for (layer, feat), mean in zip(self.features, self.mean_activation, strict=True)
            ]
        return [(layer, position, feat, float(value)) for layer, feat in self.features]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "group": self.group,
            "role": self.role,
            "token": self.token,
            "features": [list(f) for f in self.features],
            "in_share": self.in_share,
            "out_share": self.out_share,
            "mean_activation": self.mean_activation,
            "promoted_z": self.promoted_z,
            "decoder_cosine": self.decoder_cosine,
        }

    def __repr__(self) -> str:
        feats = ", ".join(f"{layer}:{feat}" for layer, feat in self.features[:6])
        more = f", … {len(self.features) - 6} more" if len(self.features) > 6 else ""
        return f"Supernode({self.name!r}, {self.kind}, [{feats}{more}])"


# ---------------------------------------------------------------------- step 1
@torch.no_grad()
def role_activations(
    model: HookedTransformer,
    clt: Transcoder,
    prompts: Sequence[Prompt],
    position: int = -1,
    batch_size: int = 64,
) -> torch.Tensor:
    """CLT activations of every prompt at ``position``: ``[P, L, F]`` float32 on the CPU.

    Prompts of the same length run as one batch (up to ``batch_size``); BOS is prepended
    as for attribution.
    """
    check_compatible(model, clt, action="find supernodes")
    L = clt.cfg.n_layers
    tokens = [to_tokens(model, p) for p in prompts]
    out = torch.zeros(len(prompts), L, clt.cfg.d_sae)
    by_length: dict[int, list[int]] = {}
    for i, t in enumerate(tokens):
        by_length.setdefault(t.numel(), []).append(i)
    names = [clt.cfg.hook_in(layer) for layer in range(L)]
    for idx in by_length.values():
        for chunk in (idx[i : i + batch_size] for i in range(0, len(idx), batch_size)):
            batch = torch.stack([tokens[i] for i in chunk]).to(model.cfg.device)  # [b, T]
            _, cache = model.run_with_cache(batch, names_filter=names)
            for layer, name in enumerate(names):
                x = cache[name][:, position].to(clt.dtype)  # [b, d_in]
                pre = clt.encode_layer_pre(x, layer)
                out[chunk, layer] = clt.activation(pre, layer).float().cpu()
    return out


# ---------------------------------------------------------------------- step 3
@torch.no_grad()
def promoted_z_scores(
    model: HookedTransformer, clt: Transcoder, features: Sequence[Feature]
) -> torch.Tensor:
    """Direct logit effect ``Σ_t W_dec[s -> t] W_U`` of each feature as z-scores over the
    vocabulary: ``[n, d_vocab]`` (the promoted tokens of the feature dashboards)."""
    W_U = model.W_U.detach().float()  # [d_model, V]
    rows = [summed_decoder(clt, layer, feat) for layer, feat in features]
    if not rows:
        return torch.zeros(0, W_U.shape[1])
    logits = torch.stack(rows).to(W_U.device) @ W_U  # [n, V]
    z = (logits - logits.mean(-1, keepdim=True)) / logits.std(-1, keepdim=True).clamp(min=1e-8)
    return z.cpu()


def summed_decoder(clt: Transcoder, layer: int, feature: int) -> torch.Tensor:
    """``Σ_t W_dec[layer -> t][feature]``: ``[d_out]`` float32 (the feature's total write)."""
    idx = torch.tensor([feature], device=clt.b_dec.device)
    return clt.decoder_rows(layer, idx)[0].detach().float().sum(0)


def first_token(model: HookedTransformer, text: str) -> int:
    """The first token id of ``text`` (tokenized without BOS)."""
    ids = model.to_tokens(text, prepend_bos=False)[0]
    if ids.numel() == 0:
        raise ValueError(f"{text!r} tokenizes to nothing")
    return int(ids[0])


# ---------------------------------------------------------------------- steps 2-5
def find_supernodes(
    model: HookedTransformer,
    clt: Transcoder,
    acts: torch.Tensor,
    groups: Sequence[str],
    *,
    group_tokens: Mapping[str, Mapping[str, str]] | None = None,
    role_names: Mapping[str, str] | None = None,
    labels: Mapping[Feature, str] | None = None,
    min_in: float = 2 / 3,
    max_out: float = 0.1,
    min_shared: float = 0.9,
    min_z: float = 3.0,
    min_cosine: float = 0.3,
    min_role_tokens: int = 3,
) -> list[Supernode]:
    """Steps 2-5: the supernodes of a prompt family.

    Args:
        acts: ``[P, L, F]`` activations at the role position (:func:`role_activations`).
        groups: ``[P]`` the group of each prompt (e.g. its city's state).
        group_tokens: per group, ``{role: token}`` such as
            ``{"Texas": {"state": " Texas", "capital": " Austin"}}``; a multi-token token
            is matched by its first token.
        role_names: name formats per role, e.g. ``{"state": "{token}", "capital":
            "say {token}", "shared capital": "say a capital"}`` (fields ``group``,
            ``role``, ``token``); default ``"{group} {role}: {token}"`` and
            ``"say a {role}"`` for shared features that promote a role's tokens.
        labels: ``{(layer, feature): label}`` to name shared supernodes.
        min_in / max_out: the co-activation rule of a group's selective features.
        min_shared: share of all prompts on which a shared feature is active.
        min_z: promoted-token z-score needed to join a role-token supernode.
        min_cosine: decoder cosine needed to join a shared group.
        min_role_tokens: a shared feature joins "say a <role>" when it promotes at least
            this many of the groups' tokens of that role at ``min_z`` (one token at z 3 out
            of 50 is chance).

    Returns:
        Group supernodes (in group order, then by name), then shared ones.
    """
    P = acts.shape[0]
    if len(groups) != P:
        raise ValueError(f"groups has {len(groups)} entries for {P} prompts: give one per prompt")
    active = acts > 0  # [P, L, F]
    names = list(dict.fromkeys(groups))
    member = torch.tensor([[g == name for g in groups] for name in names])  # [G, P]
    role_tokens = {g: dict(r) for g, r in (group_tokens or {}).items()}
    token_ids = {
        g: {role: first_token(model, tok) for role, tok in roles.items()}
        for g, roles in role_tokens.items()
    }
    out: list[Supernode] = []
    for gi, name in enumerate(names):
        m = member[gi]
        if bool(m.all()):
            raise ValueError(f"every prompt is in group {name!r}: give at least two groups")
        in_share = active[m].float().mean(0)  # [L, F]
        out_share = active[~m].float().mean(0)
        selective = ((in_share >= min_in) & (out_share <= max_out)).nonzero().tolist()
        if not selective:
            continue
        mean_act = acts[m].mean(0)  # [L, F]
        feats = [(int(layer), int(f)) for layer, f in selective]
        ids = token_ids.get(name, {})
        z = promoted_z_scores(model, clt, feats)  # [n, V]
        assigned: dict[str | None, list[int]] = {}
        for i in range(len(feats)):  # step 3: the role token it promotes most
            best, best_z = None, min_z
            for role, tok_id in ids.items():
                if float(z[i, tok_id]) >= best_z:
                    best, best_z = role, float(z[i, tok_id])
            assigned.setdefault(best, []).append(i)
        for role in [*ids, None]:
            if role not in assigned:
                continue
            members = assigned[role]
            fs = [feats[i] for i in members]
            token = role_tokens[name][role] if role is not None else None
            out.append(
                Supernode(
                    name=_name(role, token, name, role_names),
                    features=fs,
                    kind="group token" if role is not None else "group",
                    group=name,
                    role=role,
                    token=token,
                    in_share=[float(in_share[f]) for f in fs],
                    out_share=[float(out_share[f]) for f in fs],
                    mean_activation=[float(mean_act[f]) for f in fs],
                    promoted_z=[float(z[i, ids[role]]) if role else 0.0 for i in members],
                    decoder_cosine=mean_decoder_cosine(clt, fs),
                )
            )
    all_ids: dict[str, list[int]] = {}  # role -> every group's token id of that role
    for ids in token_ids.values():
        for role, tok_id in ids.items():
            all_ids.setdefault(role, []).append(tok_id)
    out += _shared_supernodes(
        model, clt, acts, active, labels or {}, all_ids, role_names, min_shared, min_z,
        min_cosine, min_role_tokens,
    )  # fmt: skip
    return out


def _name(
    role: str | None, token: str | None, group: str, role_names: Mapping[str, str] | None
) -> str:
    if role is None:
        return f"{group} (other)"
    fmt = (role_names or {}).get(role, "{group} {role}: {token}")
    return fmt.format(group=group, role=role, token=(token or "").strip())


def _shared_supernodes(
    model: HookedTransformer,
    clt: Transcoder,
    acts: torch.Tensor,
    active: torch.Tensor,
    labels: Mapping[Feature, str],
    role_ids: Mapping[str, list[int]],
    role_names: Mapping[str, str] | None,
    min_shared: float,
    min_z: float,
    min_cosine: float,
    min_role_tokens: int,
) -> list[Supernode]:
    """Steps 3-5 for the features active on most prompts: a feature that promotes at least
    ``min_role_tokens`` of the groups' tokens of a role (z >= ``min_z`` each) joins "say a
    <role>"; the rest are grouped by decoder direction."""
    share = active.float().mean(0)  # [L, F]
    feats = [(int(layer), int(f)) for layer, f in (share >= min_shared).nonzero().tolist()]
    if not feats:
        return []
    z = promoted_z_scores(model, clt, feats)  # [n, V]
    by_role: dict[str, list[int]] = {}
    rest = []
    for i in range(len(feats)):  # the role whose tokens it promotes at z >= min_z most often
        best, best_n = None, min_role_tokens - 1
        for role, ids in role_ids.items():
            n = int((z[i, sorted(set(ids))] >= min_z).sum())
            if n > best_n:
                best, best_n = role, n
        (by_role.setdefault(best, []) if best is not None else rest).append(i)
    clusters: list[tuple[str | None, list[int]]] = list(by_role.items())
    dirs = torch.stack([summed_decoder(clt, layer, f) for layer, f in feats])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    cos = dirs @ dirs.T  # [n, n], n = shared features (few)
    greedy: list[list[int]] = []
    for i in sorted(rest, key=lambda i: -float(acts[:, feats[i][0], feats[i][1]].mean())):
        for c in greedy:  # join the first group whose every member is similar enough
            if all(float(cos[i, j]) >= min_cosine for j in c):
                c.append(i)
                break
        else:
            greedy.append([i])
    clusters += [(None, c) for c in greedy]
    dec = model.tokenizer.decode if getattr(model, "tokenizer", None) is not None else str
    out = []
    for role, c in clusters:
        fs = [feats[i] for i in c]
        if role is not None:
            name = (role_names or {}).get(f"shared {role}", f"say a {role}")
        else:
            words = Counter(labels[f] for f in fs if labels.get(f))
            top = int(z[c].mean(0).argmax())
            name = words.most_common(1)[0][0] if words else f"say {dec([top]).strip()!r}"
        out.append(
            Supernode(
                name=name if role is not None else f"shared: {name}",
                features=fs,
                kind="shared",
                role=role,
                in_share=[float(share[f]) for f in fs],
                out_share=[0.0 for _ in fs],
                mean_activation=[float(acts[:, f[0], f[1]].mean()) for f in fs],
                promoted_z=[
                    float(z[i, sorted(set(role_ids[role]))].max()) if role else 0.0 for i in c
                ],  # fmt: skip
                decoder_cosine=mean_decoder_cosine(clt, fs),
            )
        )
    return out


def mean_decoder_cosine(clt: Transcoder, features: Sequence[Feature]) -> float:
    """Mean pairwise cosine similarity of the features' summed decoder vectors (1 for one)."""
    if len(features) < 2:
        return 1.0
    dirs = torch.stack([summed_decoder(clt, layer, f) for layer, f in features])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    cos = dirs @ dirs.T
    n = len(features)
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


def swap_interventions(
    remove: Sequence[Supernode], insert: Sequence[Supernode], position: int, scale: float = 1.0
) -> list[tuple[int, int, int, float]]:
    """Replace one group's supernodes by another's at ``position``: every member of
    ``remove`` set to 0, every member of ``insert`` to ``scale`` × its mean activation on
    its own group's prompts (a feature in both gets the inserted value)."""
    values: dict[tuple[int, int, int], float] = {}
    for sn in remove:
        for layer, pos, feat, v in sn.interventions(position):
            values[(layer, pos, feat)] = v
    for sn in insert:
        for layer, pos, feat, v in sn.interventions(position, value=None, scale=scale):
            values[(layer, pos, feat)] = v
    return [(*key, v) for key, v in values.items()]
