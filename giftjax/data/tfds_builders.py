"""TFDS builders for GSM8K and MATH-500 from local files, written as array_record.

The builders read the published JSONL files from TFDS's ``manual_dir`` (``<split>.jsonl``, see
`giftjax.data.published.DATASETS`), check every row, and write one array_record file per
split, in the published row order (no shuffling). Neither building nor reading needs
TensorFlow: TFDS serialises the examples itself, writes array_record through the
``array_record`` package, and [`TfdsSource`][giftjax.data.TfdsSource] reads them back with
``builder.as_data_source`` (random access, no ``tf.data``).

Importing this module imports ``tensorflow_datasets`` (``pip install 'giftjax[data]'``). Users
run `giftjax.data.prepare` rather than these classes. Each builder is registered with TFDS
under no name (``skip_registration``): the names ``giftjax_gsm8k`` / ``giftjax_math500`` are
folder names under the data_dir, and never clash with TFDS's own catalogue.
"""

from __future__ import annotations

import os
import tempfile
from typing import ClassVar

import tensorflow_datasets as tfds

from giftjax.data.published import DATASETS, TFDS_VERSION, PublishedSet, read_rows

__all__ = ["BUILDERS", "Gsm8k", "Math500", "build"]

FILE_FORMAT = "array_record"


class _PublishedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over one `PublishedSet`'s local JSONL files (set ``DATASET``)."""

    DATASET: PublishedSet
    VERSION = tfds.core.Version(TFDS_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "The published JSONL files, rows checked, order kept."
    }
    # No checksums file beside the code (nothing is downloaded by TFDS). Setting this also
    # avoids TFDS 4.9.10 looking the source file up through `importlib_resources`, a package
    # it only requires on Python < 3.9 (ModuleNotFoundError on newer Pythons without it).
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.DATASET.name}, from its published JSONL files.",
            features=tfds.features.FeaturesDict(
                {field: tfds.features.Text() for field in self.DATASET.fields}
            ),
            homepage=self.DATASET.homepage,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = dl_manager.manual_dir
        return {
            split: self._generate_examples(os.path.join(manual_dir, f"{split}.jsonl"))
            for split in self.DATASET.splits
        }

    def _generate_examples(self, path: str):
        yield from enumerate(read_rows(path, self.DATASET))


class Gsm8k(_PublishedBuilder, skip_registration=True):
    """GSM8K (train 7473 / test 1319 rows): ``question``, ``answer`` (ends in ``#### N``)."""

    name = DATASETS["gsm8k"].builder_name
    DATASET = DATASETS["gsm8k"]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "train.jsonl and test.jsonl from openai/grade-school-math."


class Math500(_PublishedBuilder, skip_registration=True):
    """MATH-500 (test, 500 rows): ``problem``, ``solution``, ``answer`` (LaTeX)."""

    name = DATASETS["math500"].builder_name
    DATASET = DATASETS["math500"]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "test.jsonl of the MATH-500 split (HuggingFaceH4/MATH-500)."


BUILDERS = {"gsm8k": Gsm8k, "math500": Math500}


def build(name: str, *, manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> str:
    """Builds data set ``name`` from ``manual_dir/<split>.jsonl`` into ``data_dir``.

    Args:
      name: "gsm8k" or "math500".
      manual_dir: the folder holding the published ``<split>.jsonl`` files.
      data_dir: the TFDS data_dir; the data set lands in ``<data_dir>/giftjax_<name>/1.0.0``.

    Returns:
      The folder the data set was written to.

    Raises:
      ValueError: an unknown name, or a malformed row (file and line named).
      FileNotFoundError: a split's file is missing from ``manual_dir``.
    """
    if name not in BUILDERS:
        raise ValueError(f"name={name!r}; expected one of {sorted(BUILDERS)}.")
    builder = BUILDERS[name](data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
    with tempfile.TemporaryDirectory() as download_dir:  # TFDS wants one; nothing lands there
        builder.download_and_prepare(
            download_dir=download_dir,
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
        )
    return os.fspath(builder.data_path)
