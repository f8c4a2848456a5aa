"""The repository's ``kernels/`` folder never shadows Hugging Face's ``kernels`` package.

transformers (5.25 and later) imports the PyPI package ``kernels``. Our Pallas kernels live in
a top-level folder of the same name, imported as ``giftjax.kernels``; if that folder were a
regular package, every process with the repo root on ``sys.path`` (pytest, ``python -m
giftjax...`` from the root) would import it in place of Hugging Face's and transformers would
fail to load. Each check runs in a fresh interpreter, once from the repo root and once from
another folder, and also imports every recipe file by path from that folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    from pathlib import Path

    import numpy as np

    import giftjax
    from giftjax import kernels as gk
    import kernels as hf_kernels
    import torch
    import transformers
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    root = Path(sys.argv[1])
    kernel_dir = (root / "kernels").resolve()
    hf_file = Path(hf_kernels.__file__).resolve()
    assert kernel_dir not in hf_file.parents, f"`import kernels` found the repo: {hf_file}"
    assert callable(gk.token_logprobs) and callable(gk.group_normalize), dir(gk)
    assert Path(gk.__path__[0]).resolve() == kernel_dir, gk.__path__

    # giftjax's kernel and a transformers model in one process, on a tiny saved checkpoint.
    hidden = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)
    head = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
    targets = np.zeros((2, 3), np.int32)
    assert gk.token_logprobs(hidden, head, targets).shape == (2, 3)
    for cls, cfg_cls in (
        (LlamaForCausalLM, transformers.LlamaConfig),
        (Qwen2ForCausalLM, transformers.Qwen2Config),
    ):
        cfg = cfg_cls(vocab_size=32, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            cls(cfg).save_pretrained(tmp)
            model = cls.from_pretrained(tmp)
            logits = model(torch.zeros((1, 4), dtype=torch.long)).logits
            assert tuple(logits.shape) == (1, 4, 32), logits.shape

    # Every recipe loads by absolute path from this working directory.
    from giftjax.config_files import load
    for recipe in sorted((root / "configs").glob("*.py")):
        module = load(recipe)
        if hasattr(module, "get_config"):
            module.get_config()
    print("OK", os.getcwd())
    """
)


def _run(cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_kernels_folder_does_not_shadow_hf_kernels(where, tmp_path):
    cwd = ROOT if where == "repo_root" else tmp_path
    proc = _run(cwd)
    assert proc.returncode == 0, f"from {cwd}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip().startswith("OK"), proc.stdout


def test_kernels_folder_is_not_a_regular_package():
    # A folder with __init__.py wins over site-packages when the repo root is on sys.path;
    # without one it is at most a namespace portion, which an installed package always beats.
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert (ROOT / "kernels" / "token_logprobs.py").is_file()
