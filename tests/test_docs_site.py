"""The documentation site builds without a warning, and its generated page is up to date.

`mkdocs build --strict` (mkdocs.yml; mkdocs-material and mkdocstrings come with the test extra)
turns every warning into a failure: a broken link between pages, a page missing from the nav,
an API-reference target (`::: giftjax.X`) griffe cannot load, an unresolved cross-reference in
a docstring. docs/guide/config.md is written by docs/gen_config.py from `base_config()`, so a
new or changed config key without a regenerated page fails here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gen_config():
    spec = importlib.util.spec_from_file_location("_gen_config", ROOT / "docs" / "gen_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_page_is_generated_from_base_config():
    from giftjax.train.config import base_config

    gen = _gen_config()
    page = (ROOT / "docs" / "guide" / "config.md").read_text()
    assert page == gen.render(), "docs/guide/config.md is out of date: python docs/gen_config.py"

    def keys(config, prefix=""):
        for name, value in config.items():
            if hasattr(value, "items") and name != "weights":
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    for key in keys(base_config()):
        assert f"| `{key}` |" in page, f"config key {key} is missing from docs/guide/config.md"


def test_every_page_is_in_the_nav():
    """mkdocs only reports pages missing from the nav at INFO level: check it here."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs").rglob("*.md")):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert rel in nav, f"docs/{rel} is not in mkdocs.yml's nav"


@pytest.mark.e2e
def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    site = tmp_path / "site"
    # The API reference rendered the objects (an import problem would leave empty pages).
    for page, name in [
        ("reference/losses/index.html", "giftjax.losses.gift_loss"),
        ("reference/optim/index.html", "giftjax.optim.gac.gac"),
        ("reference/kernels/index.html", "giftjax.kernels.token_logprobs"),
        ("reference/train/index.html", "giftjax.train.base_config"),
    ]:
        assert f'id="{name}"' in (site / page).read_text(), f"{name} is not documented in {page}"
    # $$ math reaches the page as arithmatex blocks (typeset in the browser by MathJax).
    assert 'class="arithmatex"' in (site / "algorithms/gac/index.html").read_text()
