"""python -m giftjax.data.prepare, the GSM8K / MATH-500 TFDS builders and TfdsSource.

Built from the excerpts in tests/data (always) and from the full files in ``../shared/data``
(or $GIFTJAX_SHARED_DATA) when present. The fetch path is exercised with a ``file://`` URL
only: nothing is downloaded.
"""

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

pytest.importorskip(
    "tensorflow_datasets", reason="tensorflow-datasets (the [data] and [test] extras) is absent"
)

from giftjax.data import JsonlSource, TfdsSource, get_source, prompt_dataset
from giftjax.data import prepare as prepare_lib
from giftjax.data.published import DATASETS, tfds_folder
from giftjax.train import config as config_lib
from giftjax.train import evaluate as eval_lib

DATA = Path(__file__).resolve().parent / "data"
EXCERPTS = {
    "gsm8k": DATA / "gsm8k_test_excerpt.jsonl",
    "math500": DATA / "math500_test_excerpt.jsonl",
}
SHARED = Path(os.environ.get("GIFTJAX_SHARED_DATA", os.path.join("..", "shared", "data")))


def published_folder(tmp_path, name):
    """A folder in the published layout, every split a copy of the excerpt (distinct rows per
    split so a split mix-up shows: the train split is the excerpt reversed)."""
    folder = tmp_path / f"published_{name}"
    folder.mkdir()
    lines = EXCERPTS[name].read_text(encoding="utf-8").splitlines()
    for split in DATASETS[name].splits:
        rows = lines[::-1] if split == "train" else lines
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def overrides(stdout):
    """The config overrides printed on the line after `with:` -> {key: value}."""
    found = {}
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("train on it (TFDS)"):
            for flag in shlex.split(lines[i + 1]):
                key, value = flag.removeprefix("--config.").split("=", 1)
                found[key] = value
    return found


@pytest.mark.parametrize("name", ["gsm8k", "math500"])
def test_prepare_from_local_files(tmp_path, capsys, name):
    dataset = DATASETS[name]
    src = published_folder(tmp_path, name)
    out = tmp_path / "out"
    assert prepare_lib.main([name, "--out", str(out), "--from", str(src)]) == 0
    stdout = capsys.readouterr().out
    for split in dataset.splits:
        written = out / name / f"{split}.jsonl"
        assert str(written) in stdout
        want = [
            {k: json.loads(line)[k] for k in dataset.fields}
            for line in (src / f"{split}.jsonl").read_text().splitlines()
        ]
        assert [json.loads(line) for line in written.read_text().splitlines()] == want
        # The array_record split holds the same records as the JSONL source, in file order.
        tfds_rows = TfdsSource(out, name=name, split=split)
        jsonl_rows = JsonlSource(
            written, prompt_field=dataset.prompt_field, answer_field=dataset.answer_field
        )
        assert len(tfds_rows) == len(want)
        assert list(tfds_rows) == list(jsonl_rows)
        assert tfds_rows[-1] == jsonl_rows[-1] and tfds_rows[1:3] == jsonl_rows[1:3]
        # ... and the grain pipeline batches them alike.
        batches = [prompt_dataset(rows, batch_size=4, seed=0) for rows in (tfds_rows, jsonl_rows)]
        assert batches[0][0] == batches[1][0]
    assert os.path.isfile(os.path.join(tfds_folder(out, name), "dataset_info.json"))
    assert not (out / "tfds" / "downloads").exists()

    # The printed overrides make a valid config whose sources read what was written.
    c = config_lib.base_config()
    for key, value in overrides(stdout).items():
        section, field = key.split(".")
        c[section][field] = value
    assert c.data.source == "tfds" and c.data.path == str(out) and c.data.tfds_name == name
    config_lib.validate(c, num_devices=8)
    train, evals = eval_lib.sources(c.data, seed=0)
    test = JsonlSource(out / name / "test.jsonl", prompt_field=dataset.prompt_field)
    train_split = "train" if "train" in dataset.splits else "test"
    want_train = JsonlSource(out / name / f"{train_split}.jsonl", prompt_field=dataset.prompt_field)
    assert list(train) == list(want_train)
    assert list(evals) == ["heldout"] and list(evals["heldout"]) == list(test)


def test_prepare_again_rewrites(tmp_path, capsys):
    """A second run replaces the data set (TFDS alone would keep the first build)."""
    src = published_folder(tmp_path, "math500")
    out = tmp_path / "out"
    assert prepare_lib.main(["math500", "--out", str(out), "--from", str(src)]) == 0
    first = TfdsSource(out, name="math500", split="test")[0]["prompt"]
    lines = (src / "test.jsonl").read_text().splitlines()
    (src / "test.jsonl").write_text("\n".join(lines[1:3]) + "\n")
    assert prepare_lib.main(["math500", "--out", str(out), "--from", str(src)]) == 0
    again = TfdsSource(out, name="math500", split="test")
    assert len(again) == 2 and again[0]["prompt"] != first


def test_fetch_from_file_url(tmp_path, capsys):
    src = published_folder(tmp_path, "gsm8k")
    out = tmp_path / "out"
    base = src.as_uri() + "/"
    assert prepare_lib.main(["gsm8k", "--out", str(out), "--url-base", base]) == 0
    captured = capsys.readouterr()
    assert "fetch test.jsonl" in captured.err  # the progress bar
    for split in ("train", "test"):
        assert len(TfdsSource(out, name="gsm8k", split=split)) == len(
            (src / f"{split}.jsonl").read_text().splitlines()
        )
    assert sorted(os.listdir(out / "gsm8k")) == ["test.jsonl", "train.jsonl"]  # no leftovers


def test_fetch_failure_is_reported(tmp_path, capsys):
    base = (tmp_path / "nowhere").as_uri() + "/"
    assert prepare_lib.main(["math500", "--out", str(tmp_path / "out"), "--url-base", base]) == 1
    err = capsys.readouterr().err
    assert "cannot fetch" in err and "nowhere/test.jsonl" in err and "--from" in err
    assert os.listdir(tmp_path / "out" / "math500") == []  # no partial file


def test_bad_from_path(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert prepare_lib.main(["gsm8k", "--out", out, "--from", str(tmp_path / "absent")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "test.jsonl").write_text(EXCERPTS["gsm8k"].read_text())
    assert prepare_lib.main(["gsm8k", "--out", out, "--from", str(folder)]) == 1
    assert "lacks ['train.jsonl']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"problem": "p", "solution": "s"', r"line 3: invalid JSON"),
        ('["problem"]', r"line 3: expected a JSON object; found list"),
        ('{"problem": "p", "solution": "s"}', r"line 3: field 'answer' is missing"),
        ('{"problem": "", "solution": "s", "answer": "1"}', r"line 3: field 'problem' is ''"),
        ('{"problem": "p", "solution": "s", "answer": 1}', r"line 3: field 'answer' is 1"),
    ],
)
def test_malformed_row_is_named(tmp_path, capsys, bad_line, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = EXCERPTS["math500"].read_text().splitlines()[:2]
    (folder / "test.jsonl").write_text("\n".join([*good, bad_line]) + "\n")
    assert prepare_lib.main(["math500", "--out", str(tmp_path / "o"), "--from", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "test.jsonl, " + message.replace("\\", "") in err.replace("\\", "")


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    src = published_folder(tmp_path, "math500")
    assert prepare_lib.main(["math500", "--out", str(blocker / "sub"), "--from", str(src)]) == 1
    err = capsys.readouterr().err
    assert f"--out '{blocker / 'sub'}' is not writable" in err


def test_usage_errors(tmp_path):
    with pytest.raises(SystemExit):
        prepare_lib.main(["mnist", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        prepare_lib.main(["gsm8k", "--out", str(tmp_path), "--from", "x", "--url-base", "y"])


def test_missing_prepared_folder_names_the_command(tmp_path):
    c = config_lib.base_config()
    c.data.source = "tfds"
    with pytest.raises(config_lib.ConfigError, match=r"data\.path.*giftjax\.data\.prepare gsm8k"):
        config_lib.validate(c, num_devices=8)
    c.data.path = str(tmp_path / "prepared")
    c.data.tfds_name, c.data.tfds_split = "math500", "test"
    config_lib.validate(c, num_devices=8)
    want = rf"python -m giftjax\.data\.prepare math500 --out {tmp_path / 'prepared'}"
    with pytest.raises(FileNotFoundError, match=want):
        get_source(c.data)


def test_tfds_config_checks():
    c = config_lib.base_config()
    c.data.source, c.data.path = "tfds", "/x"
    c.data.tfds_name = "math"
    with pytest.raises(config_lib.ConfigError, match=r"data\.tfds_name='math'.*'math500'"):
        config_lib.validate(c, num_devices=8)
    c.data.tfds_name = "math500"  # its only split is "test"
    with pytest.raises(config_lib.ConfigError, match=r"data\.tfds_split='train'.*\('test',\)"):
        config_lib.validate(c, num_devices=8)
    c.data.tfds_split, c.data.tfds_eval_split = "test", "train"
    with pytest.raises(config_lib.ConfigError, match=r"data\.tfds_eval_split='train'"):
        config_lib.validate(c, num_devices=8)
    c.data.tfds_name, c.data.tfds_eval_split = "gsm8k", "test"
    c.data.tfds_split, c.data.demonstration_field = "train", "answer"
    with pytest.raises(config_lib.ConfigError, match=r"demonstration_field='answer'.*'tfds'"):
        config_lib.validate(c, num_devices=8)


def test_unknown_split(tmp_path):
    src = published_folder(tmp_path, "math500")
    prepare_lib.prepare("math500", str(tmp_path / "o"), from_path=str(src))
    with pytest.raises(ValueError, match=r"split 'train' of 'math500'.*\['test'\]"):
        TfdsSource(tmp_path / "o", name="math500", split="train")


@pytest.mark.skipif(
    not (SHARED / "gsm8k" / "train.jsonl").exists(), reason=f"{SHARED}/gsm8k is absent"
)
def test_prepare_full_gsm8k(tmp_path):
    out = tmp_path / "out"
    result = prepare_lib.prepare("gsm8k", str(out), from_path=str(SHARED / "gsm8k"))
    assert {s: n for s, (_, n) in result["jsonl"].items()} == {"train": 7473, "test": 1319}
    test = TfdsSource(out, name="gsm8k", split="test")
    assert len(test) == 1319 and test[0]["prompt"].startswith("Janet")
    assert test[0]["answer"].endswith("#### 18")
    assert len(TfdsSource(out, name="gsm8k", split="train")) == 7473
    shutil.rmtree(out)
