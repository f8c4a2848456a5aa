"""LoRA in the trainer: adapters-only optimiser state, no reference copy, frozen base weights.

Runs the Trainer in-process on the tiny model (one warm-up SFT step and two GRPO steps with a
KL to the initial model, so the reference pass runs through the base graphdef).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from configs import smoke_cpu
from giftjax.models import lora
from giftjax.train.loop import Trainer

pytestmark = pytest.mark.slow


def _config(rank: int, **train):
    c = smoke_cpu.get_config("short")
    c.model.lora.rank = rank
    c.algo.name = "grpo"  # preset KL 0.04 ...
    c.algo.reference = "initial"  # ... to the initial model: the base with adapters off
    c.rollout.prompts_per_step = 8
    c.train.warmup_sft_steps = 1
    c.train.steps = 2
    c.train.updates_per_rollout = 2
    c.train.micro_batches = 1
    c.optim.learning_rate = 3e-2
    c.eval.every = 0
    c.log.progress = False
    c.log.tensorboard = False
    c.checkpoint.async_save = False
    for key, value in train.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def _bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_lora_state_is_adapters_only_and_base_weights_stay_bit_identical(tmp_path):
    c = _config(4)
    c.model.lora.train_norms = True  # the norm-gain offsets are adapters too
    trainer = Trainer(c, str(tmp_path / "lora"))
    state = trainer.state
    adapters = lora.adapter_state(state.params)
    base_before = jax.tree.map(np.asarray, lora.base_state(state.params))
    adapters_before = jax.tree.map(np.asarray, adapters)
    # No second copy of the weights: no reference, and Adam's two moments cover the adapters.
    assert state.ref_params is None
    params_bytes, adapter_bytes = _bytes(state.params), _bytes(adapters)
    assert 0 < adapter_bytes < params_bytes / 4
    opt_bytes = _bytes(state.opt_state)
    assert 2 * adapter_bytes <= opt_bytes <= 2 * adapter_bytes + 64  # + Adam's step counts
    assert _bytes(state) <= params_bytes + opt_bytes + 64
    # The full-parameter run keeps a reference copy and moments of every weight.
    full = Trainer(_config(0), str(tmp_path / "full"))
    assert _bytes(full.state) >= 4 * (params_bytes - adapter_bytes)
    full.close()

    trainer.run()
    after = trainer.state.params
    base_after = jax.tree.map(np.asarray, lora.base_state(after))
    for (path, b0), (_, b1) in zip(
        nnx.to_flat_state(base_before), nnx.to_flat_state(base_after), strict=True
    ):
        np.testing.assert_array_equal(b1.get_value(), b0.get_value(), err_msg=str(path))
    moved = [
        np.abs(np.asarray(a1.get_value()) - a0.get_value()).max()
        for (_, a0), (_, a1) in zip(
            nnx.to_flat_state(adapters_before),
            nnx.to_flat_state(lora.adapter_state(after)),
            strict=True,
        )
    ]
    assert min(moved) > 0  # every adapter trained (A too, once B is non-zero)
    assert len(moved) == 2 * 7 + 3  # A and B of 7 projections, 3 norm-gain offsets


def test_sampler_mode_skips_the_pi_old_pass(tmp_path):
    recompute = Trainer(_config(0), str(tmp_path / "r"))
    sampler = Trainer(_config(0, rollout__old_logps="sampler"), str(tmp_path / "s"))
    assert recompute.plan.needs_old and not sampler.plan.needs_old
    for t in (recompute, sampler):
        t.close()
