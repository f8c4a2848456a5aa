"""Prepare GSM8K or MATH-500 for training: checked JSONL plus a TFDS array_record data set.

Usage:

    ```
    python -m giftjax.data.prepare gsm8k --out DIR [--from PATH] [--url-base URL]
    python -m giftjax.data.prepare math500 --out DIR [--from PATH] [--url-base URL]
    ```

``--from PATH`` reads the published files from a local folder (GSM8K: ``train.jsonl`` and
``test.jsonl``; MATH-500: ``test.jsonl``). Without it the official files are fetched with
urllib (GSM8K from openai/grade-school-math on GitHub, MATH-500 from the HuggingFaceH4/MATH-500
data set); ``--url-base`` fetches ``<URL><split>.jsonl`` from elsewhere instead (a mirror, or a
``file://`` folder). Every row is checked (a malformed row stops the command with the file and
line named), then written:

- ``DIR/<name>/<split>.jsonl``: the checked rows, with only the fields giftjax reads;
- ``DIR/tfds/giftjax_<name>/1.0.0/``: the TFDS data set (array_record), when
  tensorflow-datasets is installed (``pip install 'giftjax[data]'``).

The command prints what it wrote and the config overrides that train on it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from giftjax.data.published import DATASETS, TFDS_DIR, PublishedSet, read_rows, tfds_folder

__all__ = ["fetch", "main", "prepare"]

_CHUNK = 1 << 16


class PrepareError(Exception):
    """A problem the user can fix (bad path, unwritable folder, malformed row, failed fetch)."""


def fetch(url: str, path: str) -> None:
    """Downloads ``url`` to ``path`` with a progress bar (a partial file never stays behind).

    Raises:
      PrepareError: the URL cannot be read.
    """
    partial = path + ".partial"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            size = response.headers.get("Content-Length")
            with tqdm(
                total=int(size) if size else None,
                unit="B",
                unit_scale=True,
                desc=f"fetch {url.rsplit('/', 1)[-1]}",
                file=sys.stderr,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        if os.path.exists(partial):
            os.remove(partial)
        raise PrepareError(f"cannot fetch {url}: {e} (use --from PATH with local files).") from e
    os.replace(partial, path)


def _write_jsonl(rows: list[dict], path: str) -> None:
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def _source_files(dataset: PublishedSet, from_path: str) -> dict[str, str]:
    """split -> local published file in ``from_path``; errors name what is missing."""
    if not os.path.isdir(from_path):
        raise PrepareError(
            f"--from {from_path!r} is not a folder; give the folder holding "
            f"{[f'{s}.jsonl' for s in dataset.splits]}."
        )
    files = {split: os.path.join(from_path, f"{split}.jsonl") for split in dataset.splits}
    missing = [os.path.basename(p) for p in files.values() if not os.path.isfile(p)]
    if missing:
        raise PrepareError(
            f"--from {from_path!r} lacks {missing}; {dataset.name} needs "
            f"{[f'{s}.jsonl' for s in dataset.splits]} in the published layout."
        )
    return files


def _make_out_dir(out: str, name: str) -> str:
    folder = os.path.join(out, name)
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".giftjax_write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise PrepareError(f"--out {out!r} is not writable ({e.strerror}: {e.filename}).") from e
    return folder


def prepare(
    name: str, out: str, *, from_path: str | None = None, url_base: str | None = None
) -> dict[str, object]:
    """Fetches or reads, checks and writes data set ``name`` into ``out`` (module docstring).

    Args:
      name: "gsm8k" or "math500".
      out: the output folder (created if needed).
      from_path: a local folder with the published ``<split>.jsonl`` files; None fetches them.
      url_base: the URL prefix fetched from when ``from_path`` is None (default: the official
        location, ``DATASETS[name].url_base``).

    Returns:
      ``{"jsonl": {split: (path, rows)}, "tfds": folder or None}`` (None: tensorflow-datasets
      is not installed, so no array_record was written).

    Raises:
      PrepareError: a bad ``from_path``, an unwritable ``out``, a failed fetch, or a malformed
        row (file and line named).
    """
    dataset = DATASETS[name]
    folder = _make_out_dir(out, name)
    if from_path is not None:
        sources = _source_files(dataset, from_path)
    else:
        base = url_base or dataset.url_base
        sources = {}
        for split in dataset.splits:
            sources[split] = os.path.join(folder, f"{split}.download.jsonl")
            fetch(f"{base}{split}.jsonl", sources[split])
    written = {}
    try:
        for split, source in sources.items():
            rows = read_rows(source, dataset)
            path = os.path.join(folder, f"{split}.jsonl")
            _write_jsonl(rows, path)
            written[split] = (path, len(rows))
    except (ValueError, OSError) as e:
        raise PrepareError(str(e)) from e
    finally:
        if from_path is None:
            for source in sources.values():
                if os.path.exists(source):
                    os.remove(source)
    try:
        from giftjax.data import tfds_builders
    except ImportError:
        return {"jsonl": written, "tfds": None}
    target = tfds_folder(out, name)
    if os.path.isdir(target):  # TFDS would reuse an old build instead of rewriting it
        shutil.rmtree(target)
    tfds_builders.build(name, manual_dir=folder, data_dir=os.path.join(out, TFDS_DIR))
    return {"jsonl": written, "tfds": target}


def _overrides(name: str, out: str, result: dict) -> list[str]:
    """What to print after preparing: the files and the config overrides that use them."""
    dataset = DATASETS[name]
    train_split = "train" if "train" in dataset.splits else dataset.splits[0]
    eval_split = "test"
    lines = [f"{path} ({rows} rows)" for path, rows in result["jsonl"].values()]
    lines = ["wrote:", *(f"  {line}" for line in lines)]
    if result["tfds"]:
        lines.append(f"  {result['tfds']} (TFDS array_record, splits {list(dataset.splits)})")
    else:
        lines.append("  no TFDS data set: tensorflow-datasets is not installed "
                     "(pip install 'giftjax[data]')")  # fmt: skip
    jsonl = result["jsonl"]
    if train_split != "train":
        lines.append(
            f"note: {name} has only the split {train_split!r}: train and evaluate on it only "
            "for a smoke test; use a training set of your own (data.path) for real runs."
        )
    if result["tfds"]:
        split_flag = "" if train_split == "train" else f" --config.data.tfds_split={train_split}"
        lines += [
            "train on it (TFDS) with:",
            f"  --config.data.source=tfds --config.data.tfds_name={name} "
            f"--config.data.path={out}{split_flag} --config.data.tfds_eval_split={eval_split}",
        ]
    lines += [
        "or (JSONL) with:",
        f"  --config.data.source={name} --config.data.path={jsonl[train_split][0]} "
        f"--config.data.eval_path={jsonl[eval_split][0]}",
        f"reward: {dataset.reward!r} (in the recipe: config.reward.weights = "
        f"{{{dataset.reward!r}: 1.0}})",
    ]
    return lines


def _define_flags(values: Any) -> dict[str, Any]:
    from absl import flags

    return {
        "out": flags.DEFINE_string(
            "out", None, "output folder (created if needed)", required=True, flag_values=values
        ),
        "from": flags.DEFINE_string(
            "from", None, "local folder with the published <split>.jsonl files (default: fetch "
            "them)", flag_values=values,
        ),
        "url_base": flags.DEFINE_string(
            "url-base", None, "fetch <URL><split>.jsonl from here instead of the official "
            "location", flag_values=values,
        ),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 on success, 1 on an error it explains).

    Raises:
      SystemExit: code 2 on a usage error (an unknown data set, a missing ``--out``, both
        ``--from`` and ``--url-base``).
    """
    from giftjax import runtime

    prog, usage = "python -m giftjax.data.prepare", f"{{{','.join(sorted(DATASETS))}}} --out DIR"
    flags, (name,) = runtime.parse_flags(
        argv, _define_flags, prog=prog, usage=usage + " [--from PATH | --url-base URL]", num_args=1
    )
    out, from_path, url_base = (flags[k].value for k in ("out", "from", "url_base"))
    problem = None
    if name not in DATASETS:
        problem = f"unknown data set {name!r}; choose from {sorted(DATASETS)}"
    elif from_path is not None and url_base is not None:
        problem = "give --from (local files) or --url-base (fetch), not both"
    if problem:
        print(f"usage: {prog} {usage}\nerror: {problem}", file=sys.stderr)
        raise SystemExit(2)
    try:
        result = prepare(name, out, from_path=from_path, url_base=url_base)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(_overrides(name, out, result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
