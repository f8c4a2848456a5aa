"""`Decoder.shared_prefix_hidden`: rows sharing a prompt in groups, each prompt run once.

It must give the hidden states of the full forward over the concatenated rows. The two are
different programs (the prompt's keys/values are computed on P rows instead of P*G, and the
suffix's attention concatenates them), so they agree up to float32 reordering: the bound of
tests/precision.py over the decoder's chain of reductions, scaled by the largest |hidden|.
Padding positions are excluded (a padding query attends nothing real: its output is not
defined by the model, only finite).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from precision import decoder_depth, reorder_atol

from giftjax import models, sharding
from giftjax.models.presets import PRESETS

P, G, TP, TS, V = 4, 3, 7, 5, 128


def _model(remat: str = "none"):
    cfg = dataclasses.replace(PRESETS["tiny"], vocab_size=V, dtype="float32", remat=remat)
    return models.Decoder(cfg, rngs=nnx.Rngs(0))


def _rows(seed: int = 0):
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, V, (P, TP)).astype(np.int32)
    pmask = np.ones((P, TP), np.int32)
    pmask[0, :3] = 0  # left padding of different lengths
    pmask[2, :1] = 0
    suffix = rng.integers(0, V, (P * G, TS)).astype(np.int32)
    smask = np.ones((P * G, TS), np.int32)
    smask[1, 3:] = 0  # a response that ended early (EOS), and one of a single token
    smask[5, 1:] = 0
    return prefix, pmask, suffix, smask


def _full(model, prefix, pmask, suffix, smask):
    tokens = np.concatenate([np.repeat(prefix, G, axis=0), suffix], axis=1)
    mask = np.concatenate([np.repeat(pmask, G, axis=0), smask], axis=1)
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask), return_hidden=True))


def _assert_close(model, got_p, got_s, full, pmask, smask):
    atol = reorder_atol(float(np.abs(full).max()), decoder_depth(model.config, TP + TS))
    real_p = np.repeat(pmask, G, axis=0)[::G].astype(bool)  # [P, Tp]
    np.testing.assert_allclose(np.asarray(got_p)[real_p], full[::G, :TP][real_p], atol=atol)
    real_s = smask.astype(bool)
    np.testing.assert_allclose(np.asarray(got_s)[real_s], full[:, TP:][real_s], atol=atol)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_shared_prefix_hidden_equals_full_forward(remat):
    model = _model(remat)
    prefix, pmask, suffix, smask = _rows()
    hp, hs = model.shared_prefix_hidden(
        jnp.asarray(prefix), jnp.asarray(pmask), jnp.asarray(suffix), jnp.asarray(smask),
        group_size=G,
    )  # fmt: skip
    assert hp.shape == (P, TP, model.config.hidden_size)
    assert hs.shape == (P * G, TS, model.config.hidden_size)
    _assert_close(model, hp, hs, _full(model, prefix, pmask, suffix, smask), pmask, smask)


def test_shared_prefix_hidden_sharded_fsdp():
    """On 8 fake devices with activation constraints (P = 4 prompts do not divide 8 devices:
    those constraints are dropped, the P*G = 12 suffix rows neither; the result is the same)."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    model = _model()
    full_model = _model()
    model = sharding.shard_params(model, mesh, "fsdp")
    prefix, pmask, suffix, smask = _rows(1)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, *rows):
        return nnx.merge(graphdef, state).shared_prefix_hidden(*rows, group_size=G)

    hp, hs = run(state, *(jnp.asarray(a) for a in (prefix, pmask, suffix, smask)))
    _assert_close(full_model, hp, hs, _full(full_model, prefix, pmask, suffix, smask), pmask, smask)


def test_shared_prefix_hidden_rejects_bad_shapes():
    model = _model()
    prefix, pmask, suffix, smask = _rows()
    with pytest.raises(ValueError, match=r"suffix \[P\*G, Ts\] with G = group_size = 2"):
        model.shared_prefix_hidden(prefix, pmask, suffix, smask, group_size=2)
    with pytest.raises(ValueError, match="attention_mask must have the tokens' shape"):
        model.shared_prefix_hidden(prefix, pmask[:, 1:], suffix, smask, group_size=G)
