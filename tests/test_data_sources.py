"""The GSM8K and MATH-500 sources built from a config, on the excerpts in tests/data, and the
prompt instruction (``data.instruction``) appended before the template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from giftjax import rewards
from giftjax.data import build_tokenizer, get_source
from giftjax.train import config as config_lib
from giftjax.train import evaluate as eval_lib
from giftjax.train import rollout as rollout_lib

DATA = Path(__file__).resolve().parent / "data"
GSM8K = DATA / "gsm8k_test_excerpt.jsonl"
MATH500 = DATA / "math500_test_excerpt.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(source: str, path: Path, eval_path: Path | None = None):
    c = config_lib.base_config()
    c.data.source = source
    c.data.path = str(path)
    c.data.eval_path = str(eval_path or "")
    return c


@pytest.mark.parametrize(
    ("source", "path", "prompt_field"),
    [("gsm8k", GSM8K, "question"), ("math500", MATH500, "problem")],
)
def test_named_source_maps_its_fields(source, path, prompt_field):
    c = _config(source, path, eval_path=path)
    config_lib.validate(c, num_devices=8)
    raw = _rows(path)
    for split in ("train", "eval"):
        rows = get_source(c.data, split=split)
        assert len(rows) == len(raw)
        for got, want in zip(rows, raw, strict=True):
            assert got == {"prompt": want[prompt_field], "answer": want["answer"]}
    train, evals = eval_lib.sources(c.data, seed=0)
    assert len(train) == len(raw) and list(evals) == ["heldout"]


def test_named_source_ignores_the_jsonl_field_keys():
    c = _config("gsm8k", GSM8K)
    c.data.prompt_field = "problem"  # a jsonl key; gsm8k's fields are fixed
    assert get_source(c.data)[0]["prompt"] == _rows(GSM8K)[0]["question"]


def test_gsm8k_answers_are_what_the_gsm8k_reward_reads():
    """The mapped answer is the full solution; the reward takes its `#### N` number."""
    rows = list(get_source(_config("gsm8k", GSM8K).data))
    finals = [row["answer"].rsplit("####", 1)[1].strip() for row in rows]
    right = [f"so the answer is #### {n}" for n in finals]
    wrong = ["so the answer is #### 0.5" for _ in finals]  # no GSM8K answer is 0.5
    answers = [row["answer"] for row in rows]
    fn = rewards.get("gsm8k")
    assert fn([""] * len(rows), right, answer=answers) == [1.0] * len(rows)
    assert fn([""] * len(rows), wrong, answer=answers) == [0.0] * len(rows)


@pytest.mark.parametrize("source", ["jsonl", "gsm8k", "math500"])
def test_file_sources_need_a_path(source):
    c = config_lib.base_config()
    c.data.source = source
    with pytest.raises(config_lib.ConfigError, match=rf"data\.source='{source}'.*data\.path"):
        config_lib.validate(c, num_devices=8)


def test_unknown_source_is_refused():
    c = config_lib.base_config()
    c.data.source = "gsm8k_hf"
    with pytest.raises(config_lib.ConfigError, match=r"data\.source='gsm8k_hf'.*'math500'"):
        config_lib.validate(c, num_devices=8)


def test_instruction_is_appended_before_the_template():
    tok = build_tokenizer()
    c = _config("gsm8k", GSM8K)
    rows = [{"prompt": "What is 2+3?"}]
    assert c.data.instruction == ""
    assert rollout_lib.render_prompts(tok, rows, c) == ["What is 2+3?"]
    c.data.instruction = config_lib.GSM8K_INSTRUCTION
    plain = f"What is 2+3? {config_lib.GSM8K_INSTRUCTION}"
    assert rollout_lib.render_prompts(tok, rows, c) == [plain]
    c.data.template = "chat"
    assert rollout_lib.render_prompts(tok, rows, c) == [f"<|user|>{plain}\n<|assistant|>"]
    c.data.instruction = config_lib.MATH_INSTRUCTION
    assert rollout_lib.render_prompts(tok, rows, c)[0].endswith("within \\boxed{}.\n<|assistant|>")


def test_wrong_demonstrations_corrupt_the_synthetic_train_split_only():
    c = config_lib.base_config()
    c.data.wrong_demonstrations = 0.5
    config_lib.validate(c, num_devices=8)
    train = get_source(c.data, split="train", seed=0)
    heldout = get_source(c.data, split="eval", seed=0)
    wrong = sum(train[i]["demonstration"] != train[i]["answer"] for i in range(100))
    assert abs(wrong - 50) <= 3
    assert all(heldout[i]["demonstration"] == heldout[i]["answer"] for i in range(64))
    c.data.wrong_demonstrations = 1.5
    with pytest.raises(config_lib.ConfigError, match=r"data\.wrong_demonstrations=1\.5"):
        config_lib.validate(c, num_devices=8)
    c = _config("gsm8k", GSM8K)
    c.data.wrong_demonstrations = 0.1
    with pytest.raises(config_lib.ConfigError, match="synthetic' only"):
        config_lib.validate(c, num_devices=8)


def test_gac_collect_stats_false_needs_a_fixed_or_prior_mode():
    c = config_lib.base_config()
    c.algo.name = "hybrid"
    c.train.micro_batches = 2
    c.algo.gac.collect_stats = False
    with pytest.raises(config_lib.ConfigError, match="collect_stats=False"):
        config_lib.validate(c, num_devices=2)
    c.algo.gac.mode = "fixed"
    config_lib.validate(c, num_devices=2)
