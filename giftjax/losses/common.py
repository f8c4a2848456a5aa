"""Shared pieces of the losses: input checks, per-sequence reductions, aggregation.

Every loss returns ``(loss, aux)`` where ``loss = aux["numerator"] / aux["denominator"]``
(0 when the denominator is 0). Numerators and denominators are sums, so a trainer that
splits a batch into micro-batches (or devices) adds them up and divides once, and gets
exactly the loss and gradient of the whole batch.

Shape letters: ``B`` sequences (``P`` prompts x ``G`` samples), ``T`` response tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp

from giftjax.losses._hyper import is_number

Array = jax.Array

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


# --------------------------------------------------------------------------------------
# Trace-time checks. Shapes and dtypes are static under jit, so these cost nothing at
# run time and fail before compilation with a message naming the argument.
# --------------------------------------------------------------------------------------


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise if ``value`` is not one of ``choices``, listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def is_scalar_array(name: str, value: object) -> bool:
    """True for a 0-d array, concrete or traced (a hyperparameter swept under ``jax.vmap`` or
    injected by ``optax.inject_hyperparams``), which a check cannot read and lets through.

    Raises:
      ValueError: for an array of any other rank, naming ``name`` and the shape.
    """
    if not (hasattr(value, "dtype") and hasattr(value, "shape")):
        return False
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {jnp.shape(value)}.")
    return True


def check_unit(name: str, value: object, *, upper_open: bool = False) -> None:
    """Raise unless ``value`` is a real number in [0, 1] (or [0, 1) with ``upper_open``);
    a scalar array passes unchecked (`is_scalar_array`)."""
    if is_scalar_array(name, value):
        return
    ok = is_number(value)
    if ok:
        ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")


def check_float(name: str, x: Array, ndim: int, *, shape_doc: str) -> None:
    """Raise unless ``x`` is a floating array of rank ``ndim``."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array of shape {shape_doc}, got {type(x).__name__}.")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got shape {tuple(x.shape)}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array (float32 or bfloat16), got dtype "
            f"{x.dtype}; cast it with .astype(jnp.float32)."
        )


def check_mask(mask: Array, shape: tuple[int, ...], *, name: str = "mask") -> None:
    """Raise unless ``mask`` has ``shape`` and a bool, integer or float dtype."""
    if not hasattr(mask, "shape"):
        raise TypeError(f"{name} must be an array of shape {shape}, got {type(mask).__name__}.")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{name} must have the shape of logps {tuple(shape)}, got {tuple(mask.shape)}."
        )
    if not (
        mask.dtype == jnp.bool_
        or jnp.issubdtype(mask.dtype, jnp.integer)
        or jnp.issubdtype(mask.dtype, jnp.floating)
    ):
        raise TypeError(f"{name} must be bool, integer or float (0/1), got dtype {mask.dtype}.")


def check_same_shape(name: str, x: Array, ref_name: str, ref: Array) -> None:
    """Raise unless ``x`` has the shape of ``ref``."""
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}."
        )


def check_token_inputs(
    logps: Array, mask: Array, others: dict[str, Array | None] | None = None
) -> None:
    """Check ``logps [B, T]``, ``mask [B, T]`` and other ``[B, T]`` float arrays."""
    check_float("logps", logps, 2, shape_doc="[B, T]")
    check_mask(mask, logps.shape)
    for name, x in (others or {}).items():
        if x is None:
            continue
        check_float(name, x, 2, shape_doc="[B, T]")
        check_same_shape(name, x, "logps", logps)


def check_per_sequence(name: str, x: Array, batch: int) -> None:
    """Check a per-sequence float array ``x [B]``."""
    check_float(name, x, 1, shape_doc="[B]")
    if x.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] with B={batch}, got {tuple(x.shape)}.")


def check_group_size(group_size: int, batch: int) -> None:
    """Raise unless ``group_size`` is a positive int dividing the batch."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
    if batch % group_size != 0:
        raise ValueError(
            f"The batch size B={batch} must be a multiple of group_size={group_size}: a batch "
            "holds P prompts x G samples, each prompt's samples in consecutive rows."
        )


# --------------------------------------------------------------------------------------
# Reductions.
# --------------------------------------------------------------------------------------


def as_float_mask(mask: Array) -> Array:
    """The mask as float32 0/1."""
    return mask.astype(jnp.float32)


def sequence_logps(logps: Array, mask: Array, *, reduce: str = "sum") -> Array:
    """Per-sequence sum or mean of per-token values over the response tokens.

    ``sum_i = sum_t mask[i,t] * logps[i,t]``; ``mean_i = sum_i / max(sum_t mask[i,t], 1)``
    (a fully masked row gives 0).

    Args:
      logps: ``[B, T]`` per-token log-probabilities (or any per-token values).
      mask: ``[B, T]`` response mask (bool, int or float 0/1).
      reduce: ``"sum"`` or ``"mean"``.

    Returns:
      ``[B]`` float32.
    """
    check_token_inputs(logps, mask)
    check_choice("reduce", reduce, ("sum", "mean"))
    m = as_float_mask(mask)
    total = jnp.sum(logps.astype(jnp.float32) * m, axis=-1)  # [B]
    if reduce == "sum":
        return total
    return total / jnp.maximum(jnp.sum(m, axis=-1), 1.0)


def implicit_reward(logps: Array, ref_logps: Array, mask: Array) -> Array:
    """The implicit reward of DPO, GIFT and UNA, summed over response tokens (float32 ``[B]``).

    ``k_i = sum_t mask[i,t] (logps[i,t] - ref_logps[i,t])``: no length normalisation. The
    caller decides whether gradients flow into ``ref_logps`` (wrap it in ``stop_gradient``).

    Args:
      logps: ``[B, T]`` per-token log-probs under the policy.
      ref_logps: ``[B, T]`` the same under the reference policy.
      mask: ``[B, T]`` response mask (bool, int or float 0/1).
    """
    diff = logps.astype(jnp.float32) - ref_logps.astype(jnp.float32)  # [B, T]
    return jnp.sum(diff * as_float_mask(mask), axis=-1)


def safe_divide(numerator: Array, denominator: Array) -> Array:
    """``numerator / denominator``, and 0 where the denominator is 0."""
    nonzero = denominator != 0
    return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def aggregate(
    per_token: Array, mask: Array, *, agg: str, max_len: int | None = None
) -> tuple[Array, Array]:
    """Reduce a per-token loss ``[B, T]`` to ``(numerator, denominator)`` scalars.

    With ``m = mask`` and ``n_i = sum_t m[i,t]``, ``S`` the rows with ``n_i > 0``:

    - ``token-mean``: ``sum_{i,t} m l / sum_{i,t} m`` (every token weighs the same).
    - ``seq-mean-token-mean``: ``sum_{i in S} (sum_t m l / n_i) / |S|``.
    - ``seq-mean-token-sum``: ``sum_{i in S} sum_t m l / |S|``.
    - ``seq-mean-token-sum-norm``: ``sum_{i in S} sum_t m l / max_len / |S|`` (Dr.GRPO,
      Liu et al. 2025, arXiv 2503.20783: a constant length, so no length bias).

    Names follow verl and tunix. Fully masked rows contribute to no numerator and no
    denominator. The denominators are counts, so micro-batch sums are exact.

    Args:
      per_token: ``[B, T]`` loss per token.
      mask: ``[B, T]`` response mask.
      agg: one of ``AGG_MODES``.
      max_len: the fixed length for ``seq-mean-token-sum-norm`` (default ``T``; set it
        to the generation budget so that micro-batches of other lengths agree).

    Returns:
      ``(numerator, denominator)``, float32 scalars.
    """
    check_choice("agg", agg, AGG_MODES)
    m = as_float_mask(mask)
    masked = per_token.astype(jnp.float32) * m  # [B, T]
    tokens = jnp.sum(m, axis=-1)  # [B]
    has_tokens = (tokens > 0).astype(jnp.float32)  # [B]
    if agg == "token-mean":
        return jnp.sum(masked), jnp.sum(m)
    seq_sum = jnp.sum(masked, axis=-1)  # [B]
    if agg == "seq-mean-token-mean":
        seq_value = seq_sum / jnp.maximum(tokens, 1.0)
    elif agg == "seq-mean-token-sum":
        seq_value = seq_sum
    else:
        length = per_token.shape[-1] if max_len is None else max_len
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}.")
        seq_value = seq_sum / length
    return jnp.sum(seq_value * has_tokens), jnp.sum(has_tokens)


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean of ``x`` over ``mask`` (0 when the mask is empty); for metrics."""
    m = as_float_mask(mask)
    return safe_divide(jnp.sum(x.astype(jnp.float32) * m), jnp.sum(m))


def finish(numerator: Array, denominator: Array, metrics: dict[str, Array]) -> tuple[Array, dict]:
    """Return ``(numerator / denominator, aux)`` with the numerator and denominator in aux."""
    aux = dict(metrics)
    aux["numerator"] = numerator
    aux["denominator"] = denominator
    return safe_divide(numerator, denominator), aux


def signature_defaults(fn: Callable[..., object], names: Iterable[str]) -> dict[str, object]:
    """The default values of ``fn``'s arguments ``names``, read from its signature.

    Raises:
      TypeError: if ``fn`` has no argument of one of the names, or it has no default.
    """
    params = inspect.signature(fn).parameters
    defaults = {}
    for name in names:
        param = params.get(name)
        if param is None or param.default is inspect.Parameter.empty:
            raise TypeError(
                f"{fn.__name__} has no argument {name!r} with a default value; its arguments "
                f"are {list(params)}."
            )
        defaults[name] = param.default
    return defaults


def apply_preset(
    fn: Callable[..., object],
    preset: str | None,
    presets: dict[str, dict[str, object]],
    given: dict[str, object],
    *,
    arg: str = "preset",
) -> dict[str, object]:
    """Resolve a loss's ``preset=`` into argument values.

    ``preset=None`` returns ``given`` unchanged. A named preset supplies its published
    values for the arguments it controls. Passing one of those arguments with a value other
    than the function's default (read from ``fn``'s signature, so the two cannot drift) is
    refused (ValueError naming it), so that nothing the caller asked for is silently
    overridden: use ``preset=None`` and set every argument to depart from a preset.

    Args:
      fn: the loss function, for its name and its default values.
      preset: the preset name or None.
      presets: name -> {argument: value}.
      given: the values the function received, by argument name.
      arg: the name of the preset argument, for messages.

    Returns:
      ``given`` updated with the preset's values.
    """
    if preset is None:
        return dict(given)
    fn_name = fn.__name__
    check_choice(f"{fn_name}: {arg}", preset, (None, *presets))
    defaults = signature_defaults(fn, given)
    resolved = dict(given)
    for name, value in presets[preset].items():
        if given[name] != defaults[name] and given[name] != value:
            raise ValueError(
                f"{fn_name}: {arg}={preset!r} sets {name}={value!r}, but {name}="
                f"{given[name]!r} was passed. Drop {name} to use the {arg}'s value, or "
                f"pass {arg}=None and set every argument yourself."
            )
        resolved[name] = value
    return resolved
