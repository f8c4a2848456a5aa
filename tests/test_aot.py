"""``giftjax.aot`` on a tiny recipe compiled for a v5e:2x2 TPU topology through libtpu.

One compile (module fixture) of a 4-layer toy model's three programs; the tests read its
report: every field present and finite, the memory parts consistent with the shapes, FLOPs
that count every layer (the compiled programs' cost analysis counts a scanned layer once),
and the verdict logic (the same report judged against a tighter headroom or a smaller chip
says so and names the settings to change). Skipped without libtpu.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import pytest

from configs import smoke_cpu
from giftjax import aot
from giftjax.train import flops
from giftjax.train import state as state_lib

pytestmark = [
    pytest.mark.tpu_aot,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("libtpu") is None,
        reason="libtpu is not installed (pip install libtpu==0.0.42.1): no TPU AOT compile",
    ),
]


def tiny_config():
    c = smoke_cpu.get_config("short")
    c.model.shape.num_layers = 4
    c.model.remat = "none"
    c.data.max_prompt_len = 8
    c.rollout.prompts_per_step = 8
    c.rollout.group_size = 2
    c.rollout.max_new_tokens = 4
    c.train.updates_per_rollout = 2  # pi_old log-probs: the logps program is built too
    c.train.micro_batches = 1
    c.train.warmup_sft_steps = 0
    return c


@pytest.fixture(scope="module")
def report():
    return aot.check(tiny_config(), "v5e:2x2", name="tiny")


def test_report_fields_are_present_and_finite(report):
    assert report.chips == 4 and report.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
    assert report.hbm == 16 * 2**30
    assert [p.name for p in report.programs] == ["train", "logps", "sampler"]
    for p in report.programs:
        values = [p.compile_s, p.arguments, p.outputs, p.temporaries, p.program_peak, p.peak]
        assert all(math.isfinite(v) and v >= 0 for v in values), p
        assert p.peak == p.program_peak + p.resident
        assert p.program_peak >= p.arguments, p
        assert p.flops is not None and math.isfinite(p.flops) and p.flops > 0
    assert report.fits and not report.advice
    out = json.loads(json.dumps(report.to_json()))
    assert out["peak"] == max(p["peak"] for p in out["programs"])
    assert "FITS" in aot.format_report(report)


def test_memory_parts_match_the_shapes(report):
    """Per chip: the parameters are the f32 weights over 4 fsdp shards; Adam keeps two
    moments like them; the update takes all of it as arguments; the sampler does not take
    the optimiser state but the chip holds it."""
    c = tiny_config()
    n = state_lib.model_config(c).num_params
    train, logps, sampler = report.programs
    params = train.breakdown["parameters"]
    # Parameters whose sharded axis (embed) divides by 4 split exactly; norms etc. replicate.
    assert 4 * n / 4 <= params <= 4 * n, (params, n)
    assert train.breakdown["optimizer_state"] >= 2 * params
    assert train.breakdown["gradients"] == params  # f32 accumulator, f32 parameters
    assert train.arguments >= params + train.breakdown["optimizer_state"]
    assert sampler.resident == logps.resident >= train.breakdown["optimizer_state"]
    # KV cache: keys and values [L, P*G, Tp+M, K, H] in f32 (the smoke model's dtype), rows
    # over 4 chips.
    mcfg = state_lib.model_config(c)
    kv = 2 * 4 * mcfg.num_layers * 16 * 12 * mcfg.num_kv_heads * mcfg.head_dim / 4
    assert sampler.breakdown["kv_cache"] == kv


def test_flops_count_every_layer(report):
    """Lower bounds from the matmul parameters of the L layers (2 FLOPs per weight and token
    forward, 3x that for forward and backward): a count of one scanned layer falls short."""
    c = tiny_config()
    m = state_lib.model_config(c)
    d, f, nh, kh, h = m.hidden_size, m.intermediate_size, m.num_heads, m.num_kv_heads, m.head_dim
    layer = d * nh * h + 2 * d * kh * h + nh * h * d + 3 * d * f
    weights = m.num_layers * layer
    train, logps, sampler = report.programs
    tp, g, m_new = c.data.max_prompt_len, c.rollout.group_size, c.rollout.max_new_tokens
    rows = c.rollout.prompts_per_step * g
    update_rows = rows // c.train.updates_per_rollout

    def tokens(n_rows: int) -> int:
        # Each prompt once per group (train.share_prompts; the sampler's prefill too), then
        # the M - 1 response positions that predict a next token (or are decoded) per row.
        return n_rows // g * tp + n_rows * (m_new - 1)

    assert c.train.share_prompts
    assert train.flops >= 3 * 2 * weights * tokens(update_rows)
    assert logps.flops >= 2 * weights * tokens(rows)
    assert sampler.flops >= 2 * weights * tokens(rows)
    assert train.calls_per_step == 2 and logps.calls_per_step == 1
    expected = train.flops * 2 + logps.flops + sampler.flops
    assert report.flops_per_step == pytest.approx(expected, rel=1e-12)


def test_verdict_too_tight_names_settings(report):
    """Judged against a budget just above the train state (so the state fits, the programs'
    working memory does not), the same report does not fit and names what to change for the
    update and the sampler."""
    state = max(p.resident + p.breakdown["parameters"] for p in report.programs)
    tight = aot.assess(report, tiny_config(), headroom=1 - (state + 1) / report.hbm)
    assert not tight.fits
    text = aot.format_report(tight)
    assert "TOO TIGHT" in text
    joined = " ".join(tight.advice)
    for setting in ("train.micro_batches", "mesh.tensor", "more chips", "max_new_tokens"):
        assert setting in joined, (setting, tight.advice)
    assert any(a.startswith("sampler:") and "KV cache" in a for a in tight.advice)


def test_verdict_does_not_fit_on_a_smaller_chip(report):
    small = dataclasses.replace(report, hbm=report.peak - 1)
    verdict = aot.assess(small, tiny_config(), headroom=0.0)
    assert not verdict.fits
    assert "DOES NOT FIT" in aot.format_report(verdict)


def test_unknown_chip_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown chip 'v9'.*v5p"):
        aot.chip_hbm("v9:2x2")


def test_flops_extrapolated_from_two_layers_equal_the_full_count():
    """count_flops lowers 1- and 2-layer copies and extrapolates to L layers; on the 4-layer
    toy that equals the count with all 4 layers unrolled. XLA sums each program's counts in
    float32 (about 6e-8 relative per addition; even 10^4 additions stay below 1e-3), hence
    rel=1e-3."""
    c = tiny_config()
    full = c.copy_and_resolve_references()
    full.mesh.data, full.mesh.fsdp, full.mesh.tensor = 1, 1, 1
    full.train.micro_batches = 1
    got, want = flops.count_flops(c), flops.count_flops_once(full)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-3), name


def test_compiler_out_of_memory_message_is_read():
    message = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (40.65G) exceeds available HBM (15.75G)."
    )
    assert aot.temporaries_needed(message) == int(40.65 * 2**30)
    assert aot.temporaries_needed("INTERNAL: something else (40.65G)") is None


def test_lora_recipe_reports_the_lora_update(report):
    """With ``model.lora.rank`` the compiled programs are the LoRA run's: the optimiser state
    and the gradients cover the adapters alone, no reference copy is kept (the base with the
    adapters off is the reference), and the update's arguments shrink accordingly."""
    c = tiny_config()
    c.algo.reference = "initial"
    c.model.lora.rank = 2
    c.model.lora.train_norms = True
    lora = aot.check(c, "v5e:2x2", name="tiny-lora", flops=False)
    train, full = lora.programs[0], report.programs[0]
    assert [p.name for p in lora.programs] == ["train", "logps", "sampler"]
    params = train.breakdown["parameters"]
    assert params > full.breakdown["parameters"]  # the base plus the adapters
    assert train.breakdown["reference"] == 0
    assert 0 < train.breakdown["gradients"] < params / 4
    assert train.breakdown["optimizer_state"] < 2 * params / 4
    assert train.arguments < full.arguments
