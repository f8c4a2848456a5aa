"""The Qwen2.5-7B preset: one training step's forward and backward lowers and compiles on the
CPU from abstract inputs (no weights are materialised). How long it takes is a benchmark
figure (README), not a test assertion: CI machines differ."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from giftjax.models import Decoder
from giftjax.models.presets import get_preset


@pytest.mark.slow
def test_qwen25_7b_train_step_compiles_on_cpu():
    """Forward + backward of the 7B preset lowers and compiles from abstract inputs, with the
    argument sizes of float32 parameters."""
    abstract = nnx.eval_shape(
        lambda: Decoder(get_preset("qwen2.5-7b", remat="full"), rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(abstract)

    def loss(state, tokens, mask):
        logits = nnx.merge(graphdef, state)(tokens, mask)  # [B, T, V] float32
        logp = jax.nn.log_softmax(logits[:, :-1])
        tgt = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return -jnp.sum(tgt * mask[:, 1:]) / jnp.sum(mask[:, 1:])

    tokens = jax.ShapeDtypeStruct((2, 256), jnp.int32)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(state, tokens, tokens).compile()
    mem = compiled.memory_analysis()
    # Arguments: float32 parameters (4 bytes each) plus the two token arrays.
    assert mem.argument_size_in_bytes == 4 * 7_615_616_512 + 2 * 4 * 2 * 256
