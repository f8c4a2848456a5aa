"""Every production recipe loads, validates and builds its programs abstractly (no weights).

The recipes (configs/<task>_<model>_<algo>.py) name a local checkpoint and data files that a
test machine does not have; what can be checked here is everything else: absl's config
loader reads them by path (their names hold dots), ``validate`` accepts them, and the three
device programs the Trainer runs (the update, the pi_old / reference log-probs, the sampler)
trace with the model preset's shapes under ``jax.eval_shape``, on a mesh of the 8 fake CPU
devices. Every recipe shards with ``mesh.fsdp = -1`` (all devices), so 8 devices is the
7B/8B recipes' own mesh (v5p:2x2x2 has 8 chips) and the 32B recipe's mesh at 8 instead of 64
ways; the batch divisibility checks hold at both. Whether they fit a chip's HBM is
``giftjax.aot``'s job (tests/test_aot.py, benchmarks/aot_fit.py).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from giftjax import sharding as sharding_lib
from giftjax.train import config as config_lib
from giftjax.train import programs

ROOT = Path(__file__).resolve().parents[1]
RECIPES = (
    "gsm8k_qwen2.5_0.5b_gift",
    "gsm8k_qwen2.5_7b_gift",
    "math_qwen2.5_7b_gift",
    "math_qwen2.5_32b_gift",
    "gsm8k_llama3.1_8b_grpo",
    "math_qwen3_8b_hybrid_gac",
)


def load(name: str):
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_recipe_{name.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_list_is_complete():
    """A new configs/<task>_..._<algo>.py recipe is tested too (or this list is updated)."""
    found = {
        p.stem
        for p in (ROOT / "configs").glob("*.py")
        if re.match(r"(gsm8k|math)_.+_(gift|grpo|hybrid_gac)$", p.stem)
    }
    assert found == set(RECIPES)


def test_absl_loads_a_dotted_file_name(monkeypatch):
    """``--config=configs/gsm8k_qwen2.5_7b_gift.py`` loads through absl's config flag (by path,
    so the dots in the name do not make it a package path)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    fv(["prog", "--config=configs/gsm8k_qwen2.5_7b_gift.py"])
    assert holder.value.model.preset == "qwen2.5-7b"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_docstring_gives_its_commands(name):
    doc = load(name).__doc__
    launch = f"python -m giftjax.main --config=configs/{name}.py"
    assert launch in doc, f"{name}: the docstring lacks the launch command {launch!r}"
    assert f"python -m giftjax.aot --config=configs/{name}.py --topology=" in doc


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates_and_builds_abstractly(name):
    c = load(name).get_config()
    assert c.model.hf_path and "://" not in c.model.hf_path, "a local checkpoint folder"
    assert c.model.tokenizer == "", "the checkpoint folder's tokenizer"
    assert c.data.source in ("gsm8k", "math500")
    assert c.data.instruction in (config_lib.GSM8K_INSTRUCTION, config_lib.MATH_INSTRUCTION)
    assert set(c.reward.weights) in ({"gsm8k", "format"}, {"math", "format"})
    config_lib.validate(c, num_devices=jax.device_count())

    mesh = sharding_lib.make_mesh(config_lib.mesh_shape(c, jax.device_count()))
    progs = {p.name: p for p in programs.programs(c, mesh)}
    assert set(progs) == {"train", "logps", "sampler"}  # every recipe takes 4 updates per rollout
    r = c.rollout
    rows, m = r.prompts_per_step * r.group_size, r.max_new_tokens

    state, metrics = jax.eval_shape(progs["train"].fn, *progs["train"].args)
    before = jax.tree.map(lambda x: (x.shape, x.dtype), progs["train"].args[0])
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == before
    assert "loss" in metrics and metrics["loss"].shape == ()

    logps = jax.eval_shape(progs["logps"].fn, *progs["logps"].args)
    assert logps.shape == (rows, m)

    out = jax.eval_shape(progs["sampler"].fn, *progs["sampler"].args)
    assert out.tokens.shape == out.logps.shape == (rows, m)
