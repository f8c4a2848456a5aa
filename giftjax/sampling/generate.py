"""Jitted on-policy generation with a KV cache: G samples per prompt
(docs/development/architecture.md 2, 4).

`generate` takes left-padded prompts [P, T], repeats each prompt `num_samples` (= G) times so
that the samples of prompt g are the contiguous rows `g*G .. g*G+G-1` (the losses' layout),
runs one prefill over the prompts into a preallocated KV cache of S = T + max_new_tokens slots,
then a `lax.while_loop` of one-token decode steps that stops as soon as every row has emitted
an end-of-sequence token (or after max_new_tokens). The whole of it is one jitted computation,
compiled once per (batch, prompt length, max_new_tokens, sampling settings, mesh); pad prompts
to buckets with `pad_prompts` so a run meets few shapes.

Per row, the response is the tokens up to and including the first EOS (mask 1); after it the
row emits `pad_id` with mask 0 and log-prob 0. The log-probs are those of the sampled tokens
under the temperature-scaled distribution (see `giftjax.sampling.sample_logits`), which the
trainer uses as pi_old.

With a mesh, rows are sharded over the data axes (the `batch` rule) and the cache like the
activations (`giftjax.models.kv_cache.CACHE_AXES` through the same rules table); parameters are
used where they are (place them with `giftjax.sharding.shard_params`). Random draws are the same
whatever the sharding (threefry values depend on shapes, not on placement).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from giftjax import sharding as sharding_lib
from giftjax.models.kv_cache import CACHE_AXES, KVCache
from giftjax.sampling.buckets import check_left_padded
from giftjax.sampling.token_sampler import check_sampling_args, sample_logits


class SampleOutput(NamedTuple):
    """What `generate` returns (B = P prompts x G samples, M = max_new_tokens).

    Attributes:
      tokens: [B, M] int32 response tokens; after a row's EOS, `pad_id`.
      mask: [B, M] int32, 1 for response tokens (the EOS included), 0 after it.
      logps: [B, M] float32 log-probs of the tokens under `log_softmax(logits / temperature)`
        (before top-k/top-p; `log_softmax(logits)` when temperature is 0); 0 where mask is 0.
    """

    tokens: jax.Array
    mask: jax.Array
    logps: jax.Array


class _Settings(NamedTuple):
    """The static (compile-time) settings of one generate computation."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    num_samples: int
    eos_ids: tuple[int, ...]
    pad_id: int
    cache_dtype: str | None
    mesh: Mesh | None
    rules: tuple | None


def generate_fn(
    model: nnx.Module,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int | None = None,
    cache_dtype: str | jnp.dtype | None = None,
    mesh: Mesh | None = None,
    rules: str | sharding_lib.Rules = "fsdp",
) -> tuple[Callable[..., SampleOutput], nnx.State]:
    """The jitted computation `generate` runs, and the model's state to call it with.

    `fn(state, prompt_ids, prompt_mask, key) -> SampleOutput` is `generate` with every static
    setting bound (the model's graphdef and the sampling settings), so it can be lowered and
    compiled ahead of time from abstract arguments (`jax.jit(fn).lower(...)`, as
    `giftjax.train.programs` does) or shape-checked with `jax.eval_shape`.

    Args:
      model: a `giftjax.models.Decoder` (or any NNX module with its calling convention:
        `init_cache`, `model(ids, mask, cache=, return_hidden=)`, `decode_step(ids, cache=)`,
        `lm_head_weight()`); its parameters may be abstract (`jax.ShapeDtypeStruct`).
      prompt_ids: [P, T] int, LEFT-padded prompts (every row ends at column T-1).
      prompt_mask: [P, T] bool/int, 1 for real tokens; each row 0...0 1...1 with >= 1 one
        (checked here when it is a concrete array).
      max_new_tokens: M >= 1, the response length (the cache has T + M slots).
      temperature: >= 0; 0 is greedy decoding.
      top_p: nucleus mass in (0, 1]; 1 disables.
      top_k: >= 0; 0 disables.
      num_samples: G >= 1 samples per prompt, rows `g*G .. g*G+G-1` for prompt g.
      eos_id: an id or a sequence of ids that end a response; None never stops early.
      pad_id: written after EOS; default the model config's pad_token_id, else the first
        eos id, else 0.
      cache_dtype: KV cache dtype (default the model's compute dtype).
      mesh: shard rows over the data axes and the cache like activations on this mesh
        (None: leave placement to the inputs' shardings).
      rules: the logical-axis rules table (name or table, see giftjax.sharding).

    Returns:
      `(fn, state)`.
    """
    check_sampling_args(temperature, top_k, top_p)
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}; expected an int >= 1.")
    if not isinstance(num_samples, int | np.integer) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}; expected an int >= 1.")
    if prompt_ids.ndim != 2:
        raise ValueError(f"prompt_ids must be [P, T]; received shape {prompt_ids.shape}.")
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_mask must have prompt_ids' shape {prompt_ids.shape}; "
            f"received {prompt_mask.shape}."
        )
    if not jnp.issubdtype(prompt_ids.dtype, jnp.integer):
        raise ValueError(f"prompt_ids must be integer; received dtype {prompt_ids.dtype}.")
    if isinstance(prompt_mask, np.ndarray) or (
        isinstance(prompt_mask, jax.Array)
        and not isinstance(prompt_mask, jax.core.Tracer)
        and prompt_mask.is_fully_addressable
    ):
        check_left_padded(np.asarray(prompt_mask))
    vocab = model.config.vocab_size
    if top_k > vocab:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {vocab}.")
    eos_ids = () if eos_id is None else (eos_id,) if np.ndim(eos_id) == 0 else tuple(eos_id)
    eos_ids = tuple(int(e) for e in eos_ids)
    if any(not 0 <= e < vocab for e in eos_ids):
        raise ValueError(f"eos_id={eos_id!r}; expected ids in [0, {vocab}).")
    if pad_id is None:
        pad_id = model.config.pad_token_id
        pad_id = pad_id if pad_id is not None else (eos_ids[0] if eos_ids else 0)
    rows = prompt_ids.shape[0] * num_samples
    if mesh is not None:
        rules = sharding_lib.get_rules(rules)
        sharding_lib.named_sharding(("batch",), (rows,), mesh, rules, what="sampled rows")
    settings = _Settings(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        num_samples=int(num_samples),
        eos_ids=eos_ids,
        pad_id=int(pad_id),
        cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype).name,
        mesh=mesh,
        rules=rules if mesh is not None else None,
    )
    graphdef, state = nnx.split(model)
    return functools.partial(_generate_jit, graphdef, settings=settings), state


def generate(
    model: nnx.Module,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    *,
    max_new_tokens: int,
    key: jax.Array,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int | None = None,
    cache_dtype: str | jnp.dtype | None = None,
    mesh: Mesh | None = None,
    rules: str | sharding_lib.Rules = "fsdp",
) -> SampleOutput:
    """Samples `num_samples` responses per prompt with a KV cache, in one jitted computation.

    For each row, token n is drawn from `sample_logits(logits_n, fold_in(key, n), ...)` where
    `logits_n` are the model's next-token logits after the prompt and tokens 0..n-1. Step keys
    are `jax.random.fold_in(key, n)` and each row draws its own uniform, so rows (the samples
    of one prompt included) are independent and the result is a deterministic function of
    `key`. Each prompt is prefilled once and its cache repeated for its G samples (when the P
    prompt rows shard over the mesh's data axes like the P*G rows do).

    Args:
      model, prompt_ids, prompt_mask, max_new_tokens: see `generate_fn`.
      key: a PRNG key.
      temperature, top_p, top_k, num_samples, eos_id, pad_id, cache_dtype, mesh, rules: see
        `generate_fn`.

    Returns:
      SampleOutput(tokens [P*G, M] int32, mask [P*G, M] int32, logps [P*G, M] float32).
    """
    fn, state = generate_fn(
        model,
        prompt_ids,
        prompt_mask,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        num_samples=num_samples,
        eos_id=eos_id,
        pad_id=pad_id,
        cache_dtype=cache_dtype,
        mesh=mesh,
        rules=rules,
    )
    return fn(state, prompt_ids, prompt_mask, key)


def _constrain(x: jax.Array, names: tuple, s: _Settings) -> jax.Array:
    """with_sharding_constraint by logical names when a mesh is given (else x unchanged)."""
    if s.mesh is None:
        return x
    return jax.lax.with_sharding_constraint(
        x, sharding_lib.named_sharding(names, x.shape, s.mesh, s.rules, what="sampler array")
    )


def _constrain_cache(cache: KVCache, s: _Settings) -> KVCache:
    """The cache sharded like the activations (CACHE_AXES through the rules table)."""
    if s.mesh is None:
        return cache
    return KVCache(*(_constrain(x, n, s) for x, n in zip(cache, CACHE_AXES, strict=True)))


def _batch_shards(s: _Settings) -> int:
    """How many shards the rows' (batch) axis is split into on the settings' mesh."""
    if s.mesh is None:
        return 1
    return sharding_lib.num_shards(sharding_lib.logical_to_spec(("batch",), s.rules)[0], s.mesh)


def _repeat_rows(cache: KVCache, g: int) -> KVCache:
    """The cache of P prompts -> that of P*G rows, row i holding prompt i // G's."""
    return KVCache(
        k=jnp.repeat(cache.k, g, axis=1),  # [L, B, S, K, H]
        v=jnp.repeat(cache.v, g, axis=1),
        mask=jnp.repeat(cache.mask, g, axis=0),  # [B, S]
        index=cache.index,
        positions=jnp.repeat(cache.positions, g, axis=0),  # [B]
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _generate_jit(graphdef, state, prompt_ids, prompt_mask, key, settings: _Settings):
    """The compiled body of `generate` (one per graphdef, shapes and settings)."""
    s = settings
    model = nnx.merge(graphdef, state)
    n_new, g = s.max_new_tokens, s.num_samples
    p, t = prompt_ids.shape
    b = p * g
    # Prefill each prompt once, then repeat its cache for its G samples (the G rows of a
    # prompt hold the same prompt), unless the P prompt rows cannot be sharded like the B.
    share = g > 1 and p % _batch_shards(s) == 0
    rows = p if share else b
    ids = jnp.repeat(prompt_ids.astype(jnp.int32), rows // p, axis=0)  # [rows, T]
    mask = jnp.repeat(prompt_mask.astype(bool), rows // p, axis=0)  # [rows, T]
    ids, mask = _constrain(ids, ("batch", "length"), s), _constrain(mask, ("batch", "length"), s)
    eos = jnp.asarray(s.eos_ids if s.eos_ids else (-1,), jnp.int32)

    def sample(logits, step):
        return sample_logits(
            logits,
            jax.random.fold_in(key, step),
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
        )

    def is_eos(tok):
        return jnp.any(tok[:, None] == eos[None, :], axis=-1)  # [B]

    # Prefill: the whole prompt into slots 0..T-1; logits of the last column only.
    cache = _constrain_cache(model.init_cache(rows, t + n_new, dtype=s.cache_dtype), s)
    # A one-token prompt is a decode step (t is static): the same path as every later token.
    prefill = model.decode_step if t == 1 else model
    hidden, cache = prefill(ids, mask, cache=cache, return_hidden=True)  # [rows, T, D]
    last = hidden[:, -1]  # [rows, D]
    if share:
        cache = _constrain_cache(_repeat_rows(cache, g), s)
        last = jnp.repeat(last, g, axis=0)  # [B, D]
    tok, logp = sample(model.lm_head_logits(last), 0)  # only the last column's logits
    tokens = jnp.full((b, n_new), s.pad_id, jnp.int32).at[:, 0].set(tok)
    resp_mask = jnp.zeros((b, n_new), jnp.int32).at[:, 0].set(1)
    logps = jnp.zeros((b, n_new), jnp.float32).at[:, 0].set(logp)
    carry = (jnp.int32(1), tok, is_eos(tok), _constrain_cache(cache, s), tokens, resp_mask, logps)

    def cond(carry):
        step, _, done, *_ = carry
        return (step < n_new) & ~jnp.all(done)

    def body(carry):
        step, prev, done, cache, tokens, resp_mask, logps = carry
        # One decode step: the previous token (pad for finished rows) into slot T+step-1.
        logits, cache = nnx.merge(graphdef, state).decode_step(prev[:, None], cache=cache)
        tok, logp = sample(logits[:, 0], step)
        alive = ~done
        tok = jnp.where(alive, tok, s.pad_id)
        col = (0, step)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], col)
        resp_mask = jax.lax.dynamic_update_slice(resp_mask, alive.astype(jnp.int32)[:, None], col)
        logps = jax.lax.dynamic_update_slice(logps, jnp.where(alive, logp, 0.0)[:, None], col)
        done = done | (alive & is_eos(tok))
        return step + 1, tok, done, _constrain_cache(cache, s), tokens, resp_mask, logps

    *_, tokens, resp_mask, logps = jax.lax.while_loop(cond, body, carry)
    out = SampleOutput(tokens, resp_mask, logps)
    return SampleOutput(*(_constrain(x, ("batch", "length"), s) for x in out))
