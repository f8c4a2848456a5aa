"""The tunix baseline's weight conversion: tunix's Qwen2 computes giftjax's logits.

Runs only where google-tunix is installed (`pip install -e ".[bench]"`); elsewhere it skips.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("tunix", reason="google-tunix is not installed (the [bench] extra)")

from benchmarks import tunix_baseline
from giftjax.models import Decoder, ModelConfig

# Small qwen2 shapes with GQA, q/k/v bias; tied and untied heads.
CONFIG = ModelConfig(
    family="qwen2",
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qkv_bias=True,
    dtype="float32",
)


@pytest.mark.parametrize("tied", [True, False])
def test_converted_model_has_giftjax_logits(tied):
    model = Decoder(CONFIG.replace(tie_word_embeddings=tied), rngs=nnx.Rngs(0))
    # Non-zero biases and norm weights, so that a misplaced one shows.
    keys = iter(jax.random.split(jax.random.key(1), 8))
    for var in (
        model.layers.attn.q_bias,
        model.layers.attn.k_bias,
        model.layers.attn.v_bias,
        model.layers.input_norm.weight,
        model.layers.post_attn_norm.weight,
        model.final_norm.weight,
    ):
        var[...] = var[...] + 0.3 * jax.random.normal(next(keys), var[...].shape)
    converted = tunix_baseline.tunix_qwen2_from_giftjax(model)

    b, t = 3, 7
    tokens = jax.random.randint(next(keys), (b, t), 0, CONFIG.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    want = np.asarray(model(tokens))
    got, _ = converted(tokens, positions, None, causal)
    # float32, two layers of sums over at most 48 terms: ~1e-6 relative; 1e-4 leaves margin
    # for the two implementations' different summation orders, and a misplaced weight or
    # bias moves logits by O(0.1).
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4 * np.abs(want).max())


def test_id_tokenizer_round_trip():
    tok = tunix_baseline.IdTokenizer(4096)
    ids = [5, 0, 4095, 17]
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.bos_id() is None
    assert {tok.pad_id(), tok.eos_id()} == {4096, 4097}  # outside the model's vocabulary
