"""The default model's two-hop prompt family: "The capital of the state containing {city} is".

The planted facts of :mod:`sae_lens_clt.default_model.corpus` give 50 states with three
cities each; this module turns them into what the circuit tools take:

1. :func:`family`: the 150 prompts (or those of chosen cities), the state of each (its
   group) and each prompt's answer (the capital's first token).
2. :func:`group_tokens`: per state, the role tokens ``{"state": " Texas", "capital":
   " Austin"}`` that split its selective features into supernodes; :data:`ROLE_NAMES`
   names them ("Texas", "say Austin", "say a capital").
3. :func:`family_supernodes`: :func:`~sae_lens_clt.circuits.supernodes.find_supernodes`
   over the family's activations at the last position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sae_lens_clt.circuits.supernodes import (
    Supernode,
    find_supernodes,
    first_token,
    role_activations,
)
from sae_lens_clt.default_model.corpus import STATES, TWO_HOP_PROMPT

PROMPT = TWO_HOP_PROMPT
ROLE_NAMES = {"state": "{token}", "capital": "say {token}", "shared capital": "say a capital"}


def family(
    model: Any, keep: Callable[[str, str], bool] | None = None
) -> tuple[list[str], list[str], list[int]]:
    """Step 1: ``(prompts, their states, their answers' first token ids)``; ``keep(state,
    city)`` selects cities (all 150 by default)."""
    cities = [(st, c) for st in STATES for c in st.cities if keep is None or keep(st.name, c)]
    prompts = [PROMPT.format(city=c) for _, c in cities]
    answers = [first_token(model, " " + st.capital) for st, _ in cities]
    return prompts, [st.name for st, _ in cities], answers


def group_tokens() -> dict[str, dict[str, str]]:
    """Step 2: ``{state: {"state": " <state>", "capital": " <capital>"}}``."""
    return {st.name: {"state": " " + st.name, "capital": " " + st.capital} for st in STATES}


def family_supernodes(
    model: Any,
    clt: Any,
    labels: Mapping[tuple[int, int], str] | None = None,
    keep: Callable[[str, str], bool] | None = None,
    **kwargs: Any,
) -> list[Supernode]:
    """Step 3: the supernodes of the family (``keep`` as for :func:`family`) at the last
    position; ``kwargs`` go to ``find_supernodes`` (e.g. ``min_in``)."""
    prompts, groups, _ = family(model, keep)
    acts = role_activations(model, clt, prompts, position=-1)  # [P, L, F]
    return find_supernodes(
        model, clt, acts, groups, group_tokens=group_tokens(), role_names=ROLE_NAMES,
        labels=labels, **kwargs,
    )  # fmt: skip
