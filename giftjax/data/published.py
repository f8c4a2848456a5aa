"""The published math data sets giftjax prepares and reads: their files, fields and origin.

One table for the preparation command (`giftjax.data.prepare`), the TFDS builders
(`giftjax.data.tfds_builders`) and the sources (`giftjax.data.sources`), so a file
name, a field or a URL is written once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

__all__ = ["DATASETS", "TFDS_DIR", "TFDS_VERSION", "PublishedSet", "read_rows", "tfds_folder"]

TFDS_VERSION = "1.0.0"  # the version of the giftjax TFDS builders' output
TFDS_DIR = "tfds"  # the TFDS data_dir inside a prepared folder


@dataclasses.dataclass(frozen=True)
class PublishedSet:
    """A published JSONL data set.

    Attributes:
      name: the name on the command line and in `data.tfds_name` ("gsm8k").
      splits: the split names; split ``s`` is the file ``<s>.jsonl``.
      fields: the fields every row must hold as non-empty strings (others are dropped).
      prompt_field: the field giftjax reads as the prompt.
      answer_field: the field giftjax reads as the reference answer (what the reward reads).
      url_base: where the official files are fetched from (``<url_base><split>.jsonl``).
      reward: the registered reward that scores this data set.
      homepage: the data set's home, for the TFDS metadata.
    """

    name: str
    splits: tuple[str, ...]
    fields: tuple[str, ...]
    prompt_field: str
    answer_field: str
    url_base: str
    reward: str
    homepage: str

    @property
    def builder_name(self) -> str:
        """The TFDS builder's name: the folder under the TFDS data_dir."""
        return f"giftjax_{self.name}"


def tfds_folder(prepared_dir: str | os.PathLike, name: str) -> str:
    """Where ``python -m giftjax.data.prepare NAME --out prepared_dir`` writes the TFDS data
    set: ``<prepared_dir>/tfds/giftjax_<name>/<TFDS_VERSION>``."""
    builder_name = DATASETS[name].builder_name
    return os.path.join(os.fspath(prepared_dir), TFDS_DIR, builder_name, TFDS_VERSION)


DATASETS = {
    "gsm8k": PublishedSet(
        name="gsm8k",
        splits=("train", "test"),
        fields=("question", "answer"),
        prompt_field="question",
        answer_field="answer",  # the full solution ending in "#### N"; the gsm8k reward reads N
        url_base=(
            "https://raw.githubusercontent.com/openai/grade-school-math/master/"
            "grade_school_math/data/"
        ),
        reward="gsm8k",
        homepage="https://github.com/openai/grade-school-math",
    ),
    "math500": PublishedSet(
        name="math500",
        splits=("test",),
        fields=("problem", "solution", "answer"),
        prompt_field="problem",
        answer_field="answer",
        url_base="https://huggingface.co/datasets/HuggingFaceH4/MATH-500/resolve/main/",
        reward="math",
        homepage="https://huggingface.co/datasets/HuggingFaceH4/MATH-500",
    ),
}


def read_rows(path: str | os.PathLike, dataset: PublishedSet) -> list[dict[str, Any]]:
    """Reads and checks one published JSONL file; returns its rows with only ``dataset.fields``.

    Args:
      path: a ``<split>.jsonl`` file in the published layout.
      dataset: the data set it belongs to.

    Returns:
      [N] rows ``{field: str}``, in file order (blank lines skipped).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: a line that is not a JSON object, a missing field, a field that is not a
        non-empty string, or no row at all; the message names the file and the 1-based line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset.name}: {path!r} is not a file.")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno}).") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object; found {type(row).__name__}.")
            for field in dataset.fields:
                value = row.get(field)
                if not isinstance(value, str) or not value.strip():
                    problem = "is missing" if field not in row else f"is {value!r}"
                    raise ValueError(
                        f"{where}: field {field!r} {problem}; every {dataset.name} row needs "
                        f"the non-empty string fields {list(dataset.fields)}."
                    )
            rows.append({field: row[field] for field in dataset.fields})
    if not rows:
        raise ValueError(f"{path}: no rows (the file is empty or only blank lines).")
    return rows
