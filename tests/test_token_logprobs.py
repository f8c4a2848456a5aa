"""token_logprobs: every implementation against an independent NumPy formula.

NumPy (float64) computes, for z = (h / T) @ W, p = softmax(z):
  logp = z_t - logsumexp(z),  H = logsumexp(z) - sum_v p_v z_v,
and the gradients of L = sum_n a_n logp_n + b_n H_n:
  dz = a (onehot(t) - p) - b p (z - E_p[z]),  dh = dz @ W^T / T,  dW = h^T @ dz / T.
Tolerances, on the scale of the values: the float32 summation bound u (N + D + V) (`f32_tol`,
about 4e-5 to 8e-5 here) in float32, 1e-2 in bf16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from precision import F32_EPS

from giftjax import kernels
from giftjax.kernels import _dispatch

N, D, V = 300, 64, 1000  # ragged against every block size used below
# bfloat16: the gradients come back in bf16 (8 bits: 2^-9 = 2e-3 relative rounding) and the
# cotangent dz is rounded to bf16 before its matmuls: a few times 2e-3 of the scale.
BF16_TOL = 1e-2


def f32_tol(h, w) -> float:
    """Relative tolerance (of the output's scale) of one float32 program against float64 NumPy.

    Each output is a chain of float32 sums: z over D, the logsumexp (and E_p[z]) over V, and a
    gradient's contraction over V (d hidden) or N (d lm_head); in any summation order each is
    within n u sum|terms| (u = eps / 2), so the chain is within u (N + D + V) of the scale.
    A wrong block edge or a missed temperature gives errors of order 1.
    """
    (n, d), v = h.shape, w.shape[1]
    return F32_EPS / 2 * (n + d + v)


def make_problem(dtype, n=N, d=D, v=V, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d)).astype(np.float32)
    w = (0.3 * rng.normal(size=(d, v))).astype(np.float32)
    t = rng.integers(0, v, size=(n,)).astype(np.int32)
    t[:4] = [0, v - 1, v - 1, v // 2]  # the first and last ids (the ragged last block)
    # Round through the test dtype so NumPy sees exactly the kernel's inputs.
    h = np.asarray(jnp.asarray(h, dtype).astype(jnp.float32), np.float64)
    w = np.asarray(jnp.asarray(w, dtype).astype(jnp.float32), np.float64)
    a = rng.normal(size=(n,))  # cotangent weights for the log-probs
    b = rng.normal(size=(n,))  # and for the entropy
    return h, w, t, a, b


def numpy_logprobs(h, w, t, temperature):
    z = (h / temperature) @ w  # [N, V]
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    p = np.exp(z - lse[:, None])
    logp = z[np.arange(len(t)), t] - lse
    mean_z = (p * z).sum(axis=1)
    return logp, lse - mean_z, z, p, mean_z


def numpy_grads(h, w, t, a, b, temperature, with_entropy):
    _, _, z, p, mean_z = numpy_logprobs(h, w, t, temperature)
    onehot = np.zeros_like(z)
    onehot[np.arange(len(t)), t] = 1.0
    dz = a[:, None] * (onehot - p)
    if with_entropy:
        dz -= b[:, None] * p * (z - mean_z[:, None])
    return dz @ w.T / temperature, h.T @ dz / temperature


def assert_close(actual, expected, tol, what):
    actual = np.asarray(jnp.asarray(actual).astype(jnp.float32), np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} x scale {scale:.3g}"


def run(impl, h, w, t, dtype, temperature, with_entropy, **kw):
    """Values and gradients of sum(a logp + b H) through ``impl``."""
    del h, w, dtype  # passed at call time
    tj = jnp.asarray(t)

    def loss(hj, wj, a, b):
        out = kernels.token_logprobs(
            hj, wj, tj, temperature=temperature, with_entropy=with_entropy, impl=impl, **kw
        )
        logp, ent = out if with_entropy else (out, jnp.zeros_like(out))
        return jnp.sum(a * logp) + jnp.sum(b * ent), (logp, ent)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


CASES = [(1.0, False), (0.7, True)]


@pytest.mark.parametrize(
    "impl", ["reference", "xla", pytest.param("pallas", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(("temperature", "with_entropy"), CASES)
def test_values_and_gradients_match_numpy(impl, dtype, temperature, with_entropy):
    h, w, t, a, b = make_problem(dtype)
    fn = run(impl, h, w, t, dtype, temperature, with_entropy)
    (_, (logp, ent)), (dh, dw) = fn(jnp.asarray(h, dtype), jnp.asarray(w, dtype), a, b)
    want_logp, want_ent, *_ = numpy_logprobs(h, w, t, temperature)
    want_dh, want_dw = numpy_grads(h, w, t, a, b, temperature, with_entropy)
    tol = f32_tol(h, w) if dtype == jnp.float32 else BF16_TOL
    assert logp.dtype == jnp.float32 and logp.shape == (N,)
    assert dh.dtype == dtype and dw.dtype == dtype
    assert_close(logp, want_logp, tol, f"{impl} logp")
    if with_entropy:
        assert ent.dtype == jnp.float32
        assert_close(ent, want_ent, tol, f"{impl} entropy")
    assert_close(dh, want_dh, tol, f"{impl} d hidden")
    assert_close(dw, want_dw, tol, f"{impl} d lm_head")


@pytest.mark.parametrize(
    "block_v", [pytest.param(7, marks=pytest.mark.slow), 100, 256, 999, 1000, 4096]
)
def test_xla_block_sizes_agree(block_v):
    """One block, many, an uneven tail, and a block wider than V all give the same answer."""
    h, w, t, a, b = make_problem(jnp.float32, n=40, v=1000)
    fn = run("xla", h, w, t, jnp.float32, 0.9, True, block_v=block_v)
    (_, (logp, ent)), (dh, dw) = fn(jnp.asarray(h), jnp.asarray(w), a, b)
    want_logp, want_ent, *_ = numpy_logprobs(h, w, t, 0.9)
    want_dh, want_dw = numpy_grads(h, w, t, a, b, 0.9, True)
    for got, want, what in [
        (logp, want_logp, "logp"),
        (ent, want_ent, "entropy"),
        (dh, want_dh, "dh"),
        (dw, want_dw, "dw"),
    ]:
        assert_close(got, want, f32_tol(h, w), f"block_v={block_v} {what}")


@pytest.mark.parametrize(
    ("block_n", "block_v"),
    [
        pytest.param(8, 128, marks=pytest.mark.slow),
        pytest.param(64, 384, marks=pytest.mark.slow),
        (512, 1024),
    ],
)
def test_pallas_block_sizes_agree(block_n, block_v):
    """Token and vocabulary blocks smaller than, uneven against, and larger than N and V."""
    h, w, t, a, b = make_problem(jnp.float32, n=100, v=700)
    fn = run("pallas", h, w, t, jnp.float32, 1.0, True, block_n=block_n, block_v=block_v)
    (_, (logp, ent)), (dh, dw) = fn(jnp.asarray(h), jnp.asarray(w), a, b)
    want_logp, want_ent, *_ = numpy_logprobs(h, w, t, 1.0)
    want_dh, want_dw = numpy_grads(h, w, t, a, b, 1.0, True)
    assert_close(logp, want_logp, f32_tol(h, w), "logp")
    assert_close(ent, want_ent, f32_tol(h, w), "entropy")
    assert_close(dh, want_dh, f32_tol(h, w), "dh")
    assert_close(dw, want_dw, f32_tol(h, w), "dw")


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_batch_shape_is_kept(impl):
    h, w, t, *_ = make_problem(jnp.float32, n=2 * 3 * 7, v=300)
    out = kernels.token_logprobs(
        jnp.asarray(h).reshape(2, 3, 7, D),
        jnp.asarray(w),
        jnp.asarray(t).reshape(2, 3, 7),
        impl=impl,
    )
    assert out.shape == (2, 3, 7)
    assert_close(out.reshape(-1), numpy_logprobs(h, w, t, 1.0)[0], f32_tol(h, w), "logp")


def test_xla_never_materialises_the_logits():
    """The compiled fwd+bwd temporaries stay far below one [N, V] float32 array."""
    n, d, v = 512, 32, 16384
    args = (
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )

    def f(impl):
        loss = lambda h, w, t: jnp.sum(kernels.token_logprobs(h, w, t, impl=impl, block_v=1024))
        return jax.grad(loss, argnums=(0, 1))

    temp = {
        impl: jax.jit(f(impl)).lower(*args).compile().memory_analysis().temp_size_in_bytes
        for impl in ("reference", "xla")
    }
    logits_bytes = n * v * 4
    assert temp["reference"] >= logits_bytes, temp
    assert temp["xla"] <= logits_bytes // 4, temp


def test_auto_picks_pallas_on_tpu_and_xla_elsewhere(monkeypatch):
    avail = ("reference", "xla", "pallas")
    assert _dispatch.resolve_impl("auto", available=avail, kernel="k") == "xla"  # CPU here
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert _dispatch.resolve_impl("auto", available=avail, kernel="k") == "pallas"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _dispatch.resolve_impl("auto", available=avail, kernel="k") == "xla"


def test_auto_on_a_tpu_backend_runs_the_pallas_kernels(monkeypatch):
    """With the backend reported as TPU, "auto" takes the pallas path (interpret mode here)."""
    h, w, t, *_ = make_problem(jnp.float32, n=20, v=300)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    trace = jax.make_jaxpr(lambda *a: kernels.token_logprobs(*a))  # fresh: no trace cache
    jaxpr = trace(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t))
    assert "pallas_call" in str(jaxpr)
    out = kernels.token_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t))
    assert_close(out, numpy_logprobs(h, w, t, 1.0)[0], f32_tol(h, w), "auto (tpu) logp")


def test_auto_on_cpu_matches_reference():
    h, w, t, *_ = make_problem(jnp.float32, n=20, v=300)
    trace = jax.make_jaxpr(lambda *a: kernels.token_logprobs(*a))  # fresh: no trace cache
    jaxpr = trace(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t))
    assert "pallas_call" not in str(jaxpr) and "custom_vjp_call" in str(jaxpr), "auto on CPU: xla"
    out = kernels.token_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t))
    assert_close(out, numpy_logprobs(h, w, t, 1.0)[0], f32_tol(h, w), "auto logp")


def test_bad_arguments_are_refused_with_clear_errors():
    h = jnp.zeros((5, 8))
    w = jnp.zeros((8, 130))
    t = jnp.zeros((5,), jnp.int32)
    with pytest.raises(ValueError, match=r"impl must be one of .*'triton'"):
        kernels.token_logprobs(h, w, t, impl="triton")
    with pytest.raises(ValueError, match="disagree on D"):
        kernels.token_logprobs(h, jnp.zeros((9, 130)), t)
    with pytest.raises(ValueError, match=r"targets must have shape .*\(5,\)"):
        kernels.token_logprobs(h, w, jnp.zeros((4,), jnp.int32))
    with pytest.raises(TypeError, match="integer token ids"):
        kernels.token_logprobs(h, w, jnp.zeros((5,)))
    with pytest.raises(TypeError, match="share a dtype"):
        kernels.token_logprobs(h, w.astype(jnp.bfloat16), t)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kernels.token_logprobs(h, w, t, temperature=0.0)
    with pytest.raises(ValueError, match="block_v must be a positive multiple of 128"):
        kernels.token_logprobs(h, w, t, impl="pallas", block_v=100)
    with pytest.raises(ValueError, match="block_n must be a positive multiple of 8"):
        kernels.token_logprobs(h, w, t, impl="pallas", block_n=12)
    with pytest.raises(ValueError, match="not implemented"):
        kernels.token_logprobs_sharded(
            h, w, t, mesh=jax.make_mesh((1,), ("tensor",)), impl="reference"
        )


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize(("temperature", "with_entropy"), [(1.0, False), (0.7, True)])
def test_sharded_on_8_devices_vocab_split_2(impl, temperature, with_entropy):
    """Tokens over ("data", "fsdp") = 2 x 2, vocabulary over "tensor" = 2: exact combine."""
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    h, w, t, a, b = make_problem(jnp.float32)  # N=300 over 4, V=1000 over 2 (500, ragged)

    def loss(hj, wj, a, b):
        out = kernels.token_logprobs_sharded(
            hj,
            wj,
            jnp.asarray(t),
            mesh=mesh,
            temperature=temperature,
            with_entropy=with_entropy,
            impl=impl,
            block_v=128 if impl == "pallas" else 192,
        )
        logp, ent = out if with_entropy else (out, jnp.zeros_like(out))
        return jnp.sum(a * logp) + jnp.sum(b * ent), (logp, ent)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (logp, ent)), (dh, dw) = fn(jnp.asarray(h), jnp.asarray(w), a, b)
    want_logp, want_ent, *_ = numpy_logprobs(h, w, t, temperature)
    want_dh, want_dw = numpy_grads(h, w, t, a, b, temperature, with_entropy)
    assert_close(logp, want_logp, f32_tol(h, w), "sharded logp")
    if with_entropy:
        assert_close(ent, want_ent, f32_tol(h, w), "sharded entropy")
    assert_close(dh, want_dh, f32_tol(h, w), "sharded dh")
    assert_close(dw, want_dw, f32_tol(h, w), "sharded dw")


def test_sharded_refuses_indivisible_shapes():
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "tensor"))
    h, w, t = jnp.zeros((6, 8)), jnp.zeros((8, 256)), jnp.zeros((6,), jnp.int32)
    with pytest.raises(ValueError, match="6 tokens cannot be split"):
        kernels.token_logprobs_sharded(h, w, t, mesh=mesh, impl="xla")
    with pytest.raises(ValueError, match="not a multiple of the 'tensor' axis size 2"):
        kernels.token_logprobs_sharded(
            jnp.zeros((8, 8)), jnp.zeros((8, 255)), jnp.zeros((8,), jnp.int32), mesh=mesh
        )
    with pytest.raises(ValueError, match="vocab_axis='model' is not an axis"):
        kernels.token_logprobs_sharded(h, w, t, mesh=mesh, vocab_axis="model")
