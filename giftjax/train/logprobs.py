"""Log-probs of response tokens under a policy: the forward pass every objective starts from.

A row is ``tokens [T] = prompt [Tp] ++ response [M]``. The response log-probs come from the
model's final hidden states at positions ``Tp-1 .. T-2`` (each predicts the next token) through
``kernels.token_logprobs_sharded``, which never builds ``[B, M, V]`` logits.

Shape letters: B rows, T = Tp + M tokens per row, D model width, V vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from giftjax import kernels
from giftjax import sharding as sharding_lib

Array = jax.Array


def response_logps(
    graphdef: nnx.GraphDef,
    params: Any,
    tokens: Array,
    attn_mask: Array,
    *,
    prompt_len: int,
    temperature: float,
    mesh: Mesh,
    rules: Any,
    group_size: int = 1,
) -> Array:
    """Per-token log-probs of the response part of each row under the policy ``params``.

    ``logp[i, j] = log softmax(h[i, Tp-1+j] / temperature @ W)[tokens[i, Tp+j]]``.

    With ``group_size`` G > 1 the rows are groups of G responses to one prompt (rows
    ``g*G .. g*G+G-1`` share their prompt columns, as every RL rollout batch does): each
    prompt then goes through the model once, not G times
    ([`Decoder.shared_prefix_hidden`][giftjax.models.Decoder.shared_prefix_hidden]), and only the
    first row of each group's prompt is read. The log-probs are the same up to float rounding.

    Args:
      graphdef: the model's NNX graphdef.
      params: its parameters (``nnx.State``).
      tokens: [B, T] int32, prompt (left-padded, Tp columns) then response (M columns).
      attn_mask: [B, T] 1 for real tokens (prompt padding and tokens after EOS are 0).
      prompt_len: Tp (static).
      temperature: the sampler's temperature (the log-probs are those it sampled from; 0,
        greedy, is scored at 1).
      mesh, rules: the device mesh and logical-axis rules.
      group_size: G; 1 (or B not a multiple of G, or M < 2) runs every row in full.

    Returns:
      [B, M] float32.
    """
    if tokens.ndim != 2 or attn_mask.shape != tokens.shape:
        raise ValueError(
            f"tokens and attn_mask must both be [B, T]; got {tokens.shape}, {attn_mask.shape}."
        )
    if not 0 < prompt_len < tokens.shape[1]:
        raise ValueError(f"prompt_len={prompt_len} must be in (0, T={tokens.shape[1]}).")
    model = nnx.merge(graphdef, params)
    b, t = tokens.shape
    g = int(group_size)
    if g > 1 and b % g == 0 and t - prompt_len >= 2:
        hp, hs = model.shared_prefix_hidden(
            tokens[::g, :prompt_len],
            attn_mask[::g, :prompt_len],
            tokens[:, prompt_len:-1],
            attn_mask[:, prompt_len:-1],
            group_size=g,
        )  # [P, Tp, D], [B, M-1, D]
        last = jnp.repeat(hp[:, -1:], g, axis=0)  # [B, 1, D]: position Tp-1
        hidden = jnp.concatenate([last, hs], axis=1)  # [B, M, D]
    else:
        hidden = model(tokens[:, :-1], attn_mask[:, :-1], return_hidden=True)  # [B, T-1, D]
        hidden = hidden[:, prompt_len - 1 :]  # [B, M, D]: position Tp-1+j predicts token Tp+j
    targets = tokens[:, prompt_len:]  # [B, M]
    lm_head = model.lm_head_weight().astype(hidden.dtype)  # [D, V]
    rules = sharding_lib.get_rules(rules)
    table = dict(rules)
    vocab_axis = "tensor" if table.get("vocab") == "tensor" else None
    temp = float(temperature) if temperature > 0 else 1.0
    if vocab_axis is None and mesh.shape["tensor"] > 1:
        raise ValueError("a mesh with tensor > 1 needs the fsdp_tp rules (vocab over tensor).")
    token_axes = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
    n_tokens = targets.size
    shards = 1
    for a in token_axes:
        shards *= mesh.shape[a]
    if n_tokens % shards:
        token_axes = ()
    return kernels.token_logprobs_sharded(
        hidden,
        lm_head,
        targets,
        mesh=mesh,
        token_axes=token_axes,
        vocab_axis="tensor",
        temperature=temp,
    )


def logps_fn(
    graphdef: nnx.GraphDef,
    *,
    prompt_len: int,
    temperature: float,
    mesh: Mesh,
    rules: Any,
    group_size: int = 1,
) -> Callable[[Any, Array, Array], Array]:
    """``(params, tokens [B, T], attn_mask [B, T]) -> [B, M]``: `response_logps` with
    the run's static settings bound."""
    return functools.partial(
        response_logps,
        graphdef,
        prompt_len=prompt_len,
        temperature=temperature,
        mesh=mesh,
        rules=rules,
        group_size=group_size,
    )


def make_logps_fn(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    *,
    mesh: Mesh,
    prompt_len: int,
    temperature: float,
    param_sharding: Any,
    group_size: int = 1,
):
    """The jitted ``(params, tokens [B, T], attn_mask [B, T]) -> logps [B, M]`` used for the
    reference and pi_old log-probs (no gradient); ``group_size`` as in `response_logps`
    (``RunPlan.logps_group_size`` for rollout rows, 1 for demonstrations)."""
    fn = logps_fn(
        graphdef,
        prompt_len=prompt_len,
        temperature=temperature,
        mesh=mesh,
        rules=config.mesh.rules,
        group_size=group_size,
    )
    return jax.jit(
        lambda p, t, a: jax.lax.stop_gradient(fn(p, t, a)),
        in_shardings=(param_sharding, None, None),
    )
