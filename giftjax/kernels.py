"""giftjax.kernels: fused kernels with pallas, xla and reference implementations.

The kernel modules live in the repository's top-level ``kernels/`` folder, which has no
``__init__.py`` on purpose: the bare import name ``kernels`` belongs to Hugging Face's PyPI
package (which transformers imports), and a folder without ``__init__.py`` is at most a PEP 420
namespace portion, which never shadows an installed regular package, whatever the working
directory or ``sys.path`` holds. This module is the package's front: it sets ``__path__`` to
the folder of the kernel modules, so ``giftjax.kernels.token_logprobs`` and friends import from
there:

- in a checkout (editable install, or the repo root on ``sys.path``): ``<repo>/kernels/``;
- in an installed wheel: ``giftjax/kernels/`` (setup.py copies the folder there).

Imports only jax.
"""

from pathlib import Path as _Path


def _kernel_dir() -> str:
    here = _Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "token_logprobs.py").is_file():
            return str(candidate)
    raise ImportError(
        f"giftjax.kernels: the kernel modules are missing (looked in {here / 'kernels'} and "
        f"{here.parent / 'kernels'}); reinstall giftjax with `pip install -e .` from a checkout."
    )


__path__ = [_kernel_dir()]  # makes this module a package whose submodules live in kernels/

from giftjax.kernels.group_norm import group_normalize, group_normalize_reference  # noqa: E402
from giftjax.kernels.sharded import token_logprobs_sharded  # noqa: E402
from giftjax.kernels.token_logprobs import token_logprobs, token_logprobs_reference  # noqa: E402

__all__ = [
    "group_normalize",
    "group_normalize_reference",
    "token_logprobs",
    "token_logprobs_reference",
    "token_logprobs_sharded",
]
