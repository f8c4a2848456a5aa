"""Load recipe files (``configs/*.py``) by path, from any working directory.

A recipe that builds on another (``configs/hybrid_gac_cpu.py`` on ``configs/smoke_cpu.py``, the
production recipes on ``configs/common_math.py``) must not import it as ``from configs import ...``:
that resolves only when the repository root is on ``sys.path``, so
``python -m giftjax.main --config=/abs/path/configs/gsm8k_qwen2.5_7b_gift.py`` started from
another folder would fail. Recipes load their base with `sibling` instead:

```
from giftjax.config_files import sibling

common_math = sibling(__file__, "common_math")   # configs/common_math.py, next to this file
```

Each file is executed once per process, under a private module name derived from its absolute
path, so two checkouts never share a cached module. Imports only the standard library.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_PREFIX = "giftjax_config_file_"


def load(path: str | Path) -> ModuleType:
    """Imports the Python file at ``path`` (a recipe or a recipe base) and returns the module.

    Raises:
      FileNotFoundError: ``path`` is not a file; the message names it.
    """
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found (resolved to {file}).")
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:12]
    name = f"{_PREFIX}{file.stem.replace('.', '_').replace('-', '_')}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None, file
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def sibling(anchor: str | Path, name: str) -> ModuleType:
    """The config file ``name`` (no ``.py``) in the folder of ``anchor`` (pass ``__file__``)."""
    return load(Path(anchor).resolve().parent / f"{name}.py")
