"""Per-token log-probs as Mosaic TPU (Pallas) kernels.

Three kernels, all on a grid of token blocks (``block_n`` rows, a multiple of 8)
by vocabulary blocks (``block_v`` columns, a multiple of 128), the TPU (8, 128)
tiling; the reduction axis is innermost and "arbitrary", the other "parallel":

* forward, grid ``(BT/bn, V/bv)``: float32 VMEM scratch holds the running max
  ``m``, the rescaled sum ``s``, the target logit and (for the entropy)
  ``a = sum exp(z - m) z``; the last vocabulary step writes ``logp = z_t - lse``,
  ``lse = m + log s`` and ``H = lse - a / s``.
* ``d hidden``, grid ``(BT/bn, V/bv)``: recomputes the logits, forms
  ``dz = g (1[v = t] - p) - g_H p (z - E_p[z])`` and accumulates ``dz @ W_blk^T`` in
  a float32 ``[bn, D]`` scratch.
* ``d W``, grid ``(V/bv, BT/bn)``: the same ``dz``, accumulating ``h_blk^T @ dz``
  in a float32 ``[D, bv]`` scratch.

``BT`` and ``V`` need not be multiples of the blocks: the last blocks read past
the arrays (unspecified values on a TPU, NaN in interpret mode), so vocabulary
columns ``>= V`` are set to ``-inf`` before the max and the sum, and their ``W``
columns and ``dz`` to zero before any matmul; token rows ``>= BT`` are zeroed
before the ``dW`` contraction. Out-of-range output rows/columns are dropped.

Per-token vectors travel as ``[BT, 1]`` float32 (a full-width last dimension is a
valid block). On a non-TPU backend the same kernels run with ``interpret=True``;
``lax.platform_dependent`` makes that choice when lowering, so an ahead-of-time
compile for a TPU topology from a CPU host gets the Mosaic kernels.

Shape letters: ``BT`` flattened tokens, ``D`` model width, ``V`` vocabulary; ``tau`` is the
temperature (``inv_t = 1 / tau``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from giftjax.kernels._dispatch import on_platform
from giftjax.kernels._logits import logit_grad, scaled_logits
from giftjax.kernels._matmul import dot_f32

__all__ = ["backward", "check_blocks", "default_blocks", "forward_stats"]

# VMEM the default blocks aim to stay under: v4 has 16 MiB of VMEM per core, and the
# default scoped limit is 16 MiB on v5e as well; the compiler keeps about 2 MiB more
# than ``vmem_bytes`` estimates (measured on v4 AOT compiles).
# Larger explicit blocks (v5e/v5p/v6e have 95-128 MiB) request a raised limit, up to
# ``_VMEM_MAX`` (``_compiler_params``).
_VMEM_BUDGET = 14 * 2**20
_VMEM_MAX = 64 * 2**20


def vmem_bytes(block_n: int, block_v: int, dim: int, itemsize: int, out_itemsize: int) -> int:
    """Estimated VMEM of the most demanding of the three kernels at these blocks.

    Inputs and outputs are double-buffered by the Pallas pipeline; scratch and
    ``[bn, bv]`` float32 temporaries (logits, probabilities, dz: about four) are single.
    """
    h_tile = block_n * dim * itemsize
    w_tile = dim * block_v * itemsize
    tmp = 4 * block_n * block_v * 4
    fwd = 2 * h_tile + 2 * w_tile + tmp
    dh = 2 * h_tile + 3 * w_tile + 2 * block_n * dim * out_itemsize + block_n * dim * 4 + tmp
    dw = 3 * h_tile + 2 * w_tile + 2 * dim * block_v * out_itemsize + dim * block_v * 4 + tmp
    return max(fwd, dh, dw)


def default_blocks(dim: int, itemsize: int, out_itemsize: int) -> tuple[int, int]:
    """The largest MXU-friendly ``(block_n, block_v)`` within ``_VMEM_BUDGET``.

    Falls back to (128, 128) with a raised VMEM limit (``_compiler_params``) for very
    wide models (D >= 8192) rather than to blocks too thin for the MXU.
    """
    for bn, bv in ((256, 512), (256, 256), (128, 512), (128, 256), (128, 128)):
        if vmem_bytes(bn, bv, dim, itemsize, out_itemsize) <= _VMEM_BUDGET:
            return bn, bv
    return 128, 128


def _compiler_params(block_n, block_v, dim, itemsize, out_itemsize, semantics):
    need = vmem_bytes(block_n, block_v, dim, itemsize, out_itemsize)
    limit = None if need <= _VMEM_BUDGET else min(_VMEM_MAX, need + need // 4)
    return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit)


def _col_ids(shape, j, block_v):
    """Global vocabulary id of each column of a ``shape`` tile in vocab block ``j``."""
    return j * block_v + lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(h_ref, w_ref, t_ref, *refs, inv_t, vocab, block_v, with_entropy):
    if with_entropy:
        lse_ref, tgt_ref, mz_ref, m_sc, s_sc, tgt_sc, a_sc = refs
    else:
        lse_ref, tgt_ref, m_sc, s_sc, tgt_sc = refs
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        s_sc[...] = jnp.zeros(s_sc.shape, jnp.float32)
        tgt_sc[...] = jnp.zeros(tgt_sc.shape, jnp.float32)
        if with_entropy:
            a_sc[...] = jnp.zeros(a_sc.shape, jnp.float32)

    z = scaled_logits(h_ref[...], w_ref[...], inv_t)  # [bn, bv] f32
    cols = _col_ids(z.shape, j, block_v)
    valid = cols < vocab
    z = jnp.where(valid, z, -jnp.inf)  # vocabulary padding never reaches the logsumexp
    m_old = m_sc[...]  # [bn, 1]
    m_new = jnp.maximum(m_old, jnp.max(z, axis=1, keepdims=True))
    alpha = jnp.exp(m_old - m_new)
    e = jnp.exp(z - m_new)  # 0 on padding
    s_sc[...] = s_sc[...] * alpha + jnp.sum(e, axis=1, keepdims=True)
    if with_entropy:
        ez = jnp.where(valid, e * z, 0.0)
        a_sc[...] = a_sc[...] * alpha + jnp.sum(ez, axis=1, keepdims=True)
    hit = (cols == t_ref[...]) & valid  # [bn, bv] vs [bn, 1]; ids >= V never hit padding
    tgt_sc[...] += jnp.sum(jnp.where(hit, z, 0.0), axis=1, keepdims=True)
    m_sc[...] = m_new

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        lse_ref[...] = m_sc[...] + jnp.log(s_sc[...])
        tgt_ref[...] = tgt_sc[...]
        if with_entropy:
            mz_ref[...] = a_sc[...] / s_sc[...]


def _forward(h, w, t2, *, inv_t, with_entropy, block_n, block_v, interpret):
    n, d = h.shape
    vocab = w.shape[1]
    grid = (pl.cdiv(n, block_n), pl.cdiv(vocab, block_v))
    row = pl.BlockSpec((block_n, 1), lambda i, j: (i, 0))
    n_out = 3 if with_entropy else 2
    kernel = functools.partial(
        _fwd_kernel, inv_t=inv_t, vocab=vocab, block_v=block_v, with_entropy=with_entropy
    )
    return pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((n, 1), jnp.float32)] * n_out,
        grid=grid,
        in_specs=[
            pl.BlockSpec((block_n, d), lambda i, j: (i, 0)),
            pl.BlockSpec((d, block_v), lambda i, j: (0, j)),
            row,
        ],
        out_specs=[row] * n_out,
        scratch_shapes=[pltpu.VMEM((block_n, 1), jnp.float32)] * (4 if with_entropy else 3),
        compiler_params=_compiler_params(
            block_n, block_v, d, h.dtype.itemsize, 4, ("parallel", "arbitrary")
        ),
        interpret=interpret,
        name="token_logprobs_fwd",
    )(h, w, t2)


# ---------------------------------------------------------------------------- backward


def _dh_kernel(h_ref, w_ref, t_ref, lse_ref, g_ref, *refs, inv_t, vocab, block_v, with_entropy):
    if with_entropy:
        mz_ref, ge_ref, dh_ref, acc = refs
    else:
        dh_ref, acc = refs
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)

    w = w_ref[...]  # [D, bv]
    w = jnp.where(_col_ids(w.shape, j, block_v) < vocab, w, jnp.zeros_like(w))
    z = scaled_logits(h_ref[...], w, inv_t)  # [bn, bv]
    cols = _col_ids(z.shape, j, block_v)
    mean_z, g_ent = (mz_ref[...], ge_ref[...]) if with_entropy else (None, None)
    dz = logit_grad(z, cols == t_ref[...], lse_ref[...], g_ref[...], mean_z, g_ent, inv_t)
    dz = jnp.where(cols < vocab, dz, 0.0).astype(w.dtype)
    # [bn, bv] x [D, bv] -> [bn, D]
    acc[...] += dot_f32(dz, w, (1, 1))

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        dh_ref[...] = acc[...].astype(dh_ref.dtype)


def _dw_kernel(
    h_ref, w_ref, t_ref, lse_ref, g_ref, *refs, inv_t, num_tokens, block_n, block_v, with_entropy
):
    if with_entropy:
        mz_ref, ge_ref, dw_ref, acc = refs
    else:
        dw_ref, acc = refs
    j, i = pl.program_id(0), pl.program_id(1)

    @pl.when(i == 0)
    def _init():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)

    h = h_ref[...]  # [bn, D]
    rows_h = i * block_n + lax.broadcasted_iota(jnp.int32, h.shape, 0)
    h = jnp.where(rows_h < num_tokens, h, jnp.zeros_like(h))  # token padding -> 0
    z = scaled_logits(h, w_ref[...], inv_t)  # [bn, bv]
    cols = _col_ids(z.shape, j, block_v)
    mean_z, g_ent = (mz_ref[...], ge_ref[...]) if with_entropy else (None, None)
    dz = logit_grad(z, cols == t_ref[...], lse_ref[...], g_ref[...], mean_z, g_ent, inv_t)
    rows = i * block_n + lax.broadcasted_iota(jnp.int32, dz.shape, 0)
    dz = jnp.where(rows < num_tokens, dz, 0.0).astype(h.dtype)
    # [bn, D] x [bn, bv] -> [D, bv]
    acc[...] += dot_f32(h, dz, (0, 0))

    @pl.when(i == pl.num_programs(1) - 1)
    def _finish():
        dw_ref[...] = acc[...].astype(dw_ref.dtype)


def _backward(
    h, w, t2, lse, g, mean_z, g_ent, *, inv_t, block_n, block_v, dh_dtype, dw_dtype, interpret
):
    n, d = h.shape
    vocab = w.shape[1]
    with_entropy = g_ent is not None
    rows_in = [t2, lse, g] + ([mean_z, g_ent] if with_entropy else [])
    out_itemsize = max(jnp.dtype(dh_dtype).itemsize, jnp.dtype(dw_dtype).itemsize)
    params = _compiler_params(
        block_n, block_v, d, h.dtype.itemsize, out_itemsize, ("parallel", "arbitrary")
    )

    # d hidden: grid (token block i, vocab block j).
    row = pl.BlockSpec((block_n, 1), lambda i, j: (i, 0))
    dh = pl.pallas_call(
        functools.partial(
            _dh_kernel, inv_t=inv_t, vocab=vocab, block_v=block_v, with_entropy=with_entropy
        ),
        out_shape=jax.ShapeDtypeStruct((n, d), dh_dtype),
        grid=(pl.cdiv(n, block_n), pl.cdiv(vocab, block_v)),
        in_specs=[
            pl.BlockSpec((block_n, d), lambda i, j: (i, 0)),
            pl.BlockSpec((d, block_v), lambda i, j: (0, j)),
        ]
        + [row] * len(rows_in),
        out_specs=pl.BlockSpec((block_n, d), lambda i, j: (i, 0)),
        scratch_shapes=[pltpu.VMEM((block_n, d), jnp.float32)],
        compiler_params=params,
        interpret=interpret,
        name="token_logprobs_dhidden",
    )(h, w, *rows_in)

    # dW: grid (vocab block j, token block i); tokens are the reduction.
    row_t = pl.BlockSpec((block_n, 1), lambda j, i: (i, 0))
    dw = pl.pallas_call(
        functools.partial(
            _dw_kernel,
            inv_t=inv_t,
            num_tokens=n,
            block_n=block_n,
            block_v=block_v,
            with_entropy=with_entropy,
        ),
        out_shape=jax.ShapeDtypeStruct((d, vocab), dw_dtype),
        grid=(pl.cdiv(vocab, block_v), pl.cdiv(n, block_n)),
        in_specs=[
            pl.BlockSpec((block_n, d), lambda j, i: (i, 0)),
            pl.BlockSpec((d, block_v), lambda j, i: (0, j)),
        ]
        + [row_t] * len(rows_in),
        out_specs=pl.BlockSpec((d, block_v), lambda j, i: (0, j)),
        scratch_shapes=[pltpu.VMEM((d, block_v), jnp.float32)],
        compiler_params=params,
        interpret=interpret,
        name="token_logprobs_dlmhead",
    )(h, w, *rows_in)
    return dh, dw


# ------------------------------------------------------------------------ entry points


def check_blocks(block_n: int, block_v: int) -> None:
    """Block shapes must satisfy the TPU (8, 128) tiling."""
    if not isinstance(block_n, int) or block_n < 8 or block_n % 8:
        raise ValueError(
            f"block_n must be a positive multiple of 8 (TPU sublanes), got {block_n!r}."
        )
    if not isinstance(block_v, int) or block_v < 128 or block_v % 128:
        raise ValueError(
            f"block_v must be a positive multiple of 128 (TPU lanes), got {block_v!r}."
        )


def forward_stats(h, w, t, *, inv_t, with_entropy, block_n, block_v, interpret=None):
    """``(lse [BT], target logit [BT] (0 when t is outside [0, V)), E_p[z] [BT] or None)``."""
    check_blocks(block_n, block_v)
    fwd = functools.partial(
        _forward, inv_t=inv_t, with_entropy=with_entropy, block_n=block_n, block_v=block_v
    )
    outs = on_platform(fwd, interpret, h, w, t.astype(jnp.int32)[:, None])
    lse, tgt = outs[0][:, 0], outs[1][:, 0]
    return lse, tgt, (outs[2][:, 0] if with_entropy else None)


def backward(
    h, w, t, lse, mean_z, g, g_ent, *, inv_t, block_n, block_v, dh_dtype, dw_dtype, interpret=None
):
    """``(d hidden [BT, D] in dh_dtype, dW [D, V] in dw_dtype)`` from global statistics."""
    check_blocks(block_n, block_v)
    col = lambda x: None if x is None else x.astype(jnp.float32)[:, None]  # [BT] -> [BT, 1]
    bwd = functools.partial(
        _backward,
        inv_t=inv_t,
        block_n=block_n,
        block_v=block_v,
        dh_dtype=dh_dtype,
        dw_dtype=dw_dtype,
    )
    args = (h, w, t.astype(jnp.int32)[:, None], col(lse), col(g), col(mean_z), col(g_ent))
    return on_platform(bwd, interpret, *args)
