"""griffe extensions for the API reference (mkdocs.yml loads both).

``KernelsFolder`` documents ``giftjax.kernels``, whose modules live in the top-level folder:

``giftjax/kernels.py`` sets ``__path__`` to ``kernels/`` at import time (that folder has no
``__init__.py``, so Hugging Face's ``kernels`` package is never shadowed), which static analysis
cannot follow: the front module's imports (``from giftjax.kernels.token_logprobs import
token_logprobs``) would point at modules griffe cannot find, and the page would list nothing.
This extension reads each module the front imports from ``kernels/`` and puts the imported
objects in the front module under their public names, so ``::: giftjax.kernels`` documents
them as ``giftjax.kernels.token_logprobs`` and so on (the paths users import).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

FRONT = "giftjax.kernels"


class KernelsFolder(griffe.Extension):
    def on_module_members(self, *, mod: griffe.Module, **kwargs: Any) -> None:
        if mod.path != FRONT or mod.filepath is None:
            return
        folder = Path(mod.filepath).resolve().parents[1] / "kernels"
        visited: dict[str, griffe.Module] = {}
        for name, member in list(mod.members.items()):
            if not member.is_alias or not member.target_path.startswith(FRONT + "."):
                continue
            module, _, obj = member.target_path.removeprefix(FRONT + ".").rpartition(".")
            if module not in visited:
                path = folder / f"{module.replace('.', '/')}.py"
                visited[module] = griffe.visit(
                    f"{FRONT}.{module}",
                    path,
                    path.read_text(),
                    docstring_parser=mod.docstring.parser if mod.docstring else None,
                    docstring_options=mod.docstring.parser_options if mod.docstring else None,
                )
            target = visited[module].members[obj]
            target.parent = mod
            target.name = name
            mod.set_member(name, target)


_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)


class ExampleSection(griffe.Extension):
    """Reads a Google-style ``Example:`` header as ``Examples:``, the section name griffe
    parses, so its doctest renders as code instead of prose (where ``>>> [x]`` followed by
    ``[y]`` would read as a Markdown link)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and "Example:" in obj.docstring.value:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
