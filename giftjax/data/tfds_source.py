"""A random-access source over a GSM8K or MATH-500 split prepared as TFDS array_record.

``python -m giftjax.data.prepare NAME --out DIR`` writes ``DIR/tfds/giftjax_NAME/1.0.0``; this
source reads one split of it with ``tfds.builder_from_directory(...).as_data_source(split)``:
random access into the array_record file, decoded by TFDS without TensorFlow. Needs
``tensorflow-datasets`` (``pip install 'giftjax[data]'``), imported when a source is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from giftjax.data.published import DATASETS, tfds_folder
from giftjax.data.records import to_record

__all__ = ["TfdsSource"]


def _prepare_command(name: str, prepared_dir: str) -> str:
    return f"python -m giftjax.data.prepare {name} --out {prepared_dir}"


class TfdsSource(Sequence):
    """Random access over one split of a prepared GSM8K or MATH-500 TFDS data set.

    Records are ``{"prompt", "answer"}`` from the data set's fields (GSM8K ``question`` /
    ``answer``, MATH-500 ``problem`` / ``answer``; `giftjax.data.published.DATASETS`),
    the same records the ``gsm8k`` / ``math500`` JSONL sources give. Rows are decoded and
    checked when read; the preparation command checked every row when it wrote them.

    Args:
      prepared_dir: the folder given to the preparation command as ``--out`` (`data.path`).
      name: "gsm8k" or "math500" (`data.tfds_name`).
      split: a split of that data set: GSM8K "train" or "test", MATH-500 "test"
        (`data.tfds_split`, `data.tfds_eval_split`).

    Raises:
      ValueError: an unknown name or split.
      FileNotFoundError: the data set was not prepared in ``prepared_dir``; the message gives
        the command that prepares it.
      ImportError: tensorflow-datasets is not installed.
    """

    def __init__(self, prepared_dir: str | os.PathLike, *, name: str, split: str):
        self.prepared_dir = os.fspath(prepared_dir)
        if name not in DATASETS:
            raise ValueError(f"data.tfds_name={name!r}; expected one of {sorted(DATASETS)}.")
        self.dataset = DATASETS[name]
        if split not in self.dataset.splits:
            raise ValueError(
                f"split {split!r} of {name!r}; it has the splits {list(self.dataset.splits)} "
                "(config keys data.tfds_split / data.tfds_eval_split)."
            )
        self.name, self.split = name, split
        self.folder = tfds_folder(self.prepared_dir, name)
        if not os.path.isfile(os.path.join(self.folder, "dataset_info.json")):
            raise FileNotFoundError(
                f"data.path={self.prepared_dir!r} holds no prepared {name} data set "
                f"({self.folder}/dataset_info.json is missing); prepare it with: "
                f"{_prepare_command(name, self.prepared_dir)}"
            )
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ImportError(
                "data.source='tfds' needs tensorflow-datasets: pip install 'giftjax[data]'."
            ) from e
        self._rows = tfds.builder_from_directory(self.folder).as_data_source(split=split)
        if len(self._rows) == 0:
            raise ValueError(
                f"{self.folder}: split {split!r} has no rows; prepare it again with: "
                f"{_prepare_command(name, self.prepared_dir)}"
            )

    def __len__(self) -> int:
        return len(self._rows)

    def _record(self, index: int) -> dict[str, Any]:
        row = {
            k: v.decode("utf-8") if isinstance(v, bytes) else v
            for k, v in self._rows[index].items()
        }
        return to_record(
            row,
            f"{self.folder}, split {self.split}, row {index + 1}",
            prompt_field=self.dataset.prompt_field,
            answer_field=self.dataset.answer_field,
        )

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._record(i) for i in range(*index.indices(len(self)))]
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for {size} rows")
        return self._record(index % size)

    def __repr__(self) -> str:
        return (
            f"TfdsSource({self.prepared_dir!r}, name={self.name!r}, split={self.split!r}, "
            f"rows={len(self)})"
        )
