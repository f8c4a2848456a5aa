"""Parity of giftjax decoders with transformers' PyTorch implementation, through HF files.

For each tiny random family config: transformers `save_pretrained` (safetensors) -> `load_hf`
-> logits on a left-padded batch, compared on real tokens only, within the float32 reordering
bound of two programs (tests/precision.py: 1.2e-7 x 700-950 summed reduction lengths x
max|logit|, a few 1e-4); then `save_hf` -> transformers `from_pretrained` -> the same logits.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from hf_models import CASES, hf_logits, make_hf_model, padded_batch
from precision import logits_atol

from giftjax.models import load_hf, save_hf


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_hf_matches_transformers(case, tmp_path):
    hf = make_hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    tokens, mask = padded_batch()
    expected = hf_logits(hf, tokens, mask)
    assert np.abs(expected).max() > 0.5, "logits too small for a meaningful comparison"

    model = load_hf(tmp_path / "hf", dtype=jnp.float32)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    real = mask.astype(bool)
    atol = logits_atol(model.config, expected, kv_len=tokens.shape[1])
    np.testing.assert_allclose(got[real], expected[real], atol=atol, rtol=0)
    assert np.isfinite(got).all()

    # Export and read back with transformers.
    save_hf(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    again = hf_logits(back, tokens, mask)
    np.testing.assert_allclose(again[real], expected[real], atol=atol, rtol=0)
