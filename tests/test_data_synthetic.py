"""Synthetic tasks: determinism, disjoint splits, correct answers, the partial-credit score."""

import re

import hypothesis.strategies as st
import pytest
from hypothesis import given

from giftjax.data import KINDS, SyntheticTask, score, synthetic_reward


def test_items_are_deterministic_and_depend_on_seed_and_split():
    a = SyntheticTask(kind="reverse", split="train", size=100, seed=7)
    b = SyntheticTask(kind="reverse", split="train", size=100, seed=7)
    assert [a[i] for i in range(100)] == [b[i] for i in reversed(range(100))][::-1]
    assert a[5] == a[5] == a[-95]
    other_seed = SyntheticTask(kind="reverse", split="train", size=100, seed=8)
    assert sum(a[i] == other_seed[i] for i in range(100)) < 10
    assert list(a[3:6]) == [a[3], a[4], a[5]]


def test_reverse_answers_and_split_ranges():
    for split, (lo, hi) in (("train", (3, 5)), ("heldout", (6, 7))):
        lengths = set()
        for item in SyntheticTask(kind="reverse", split=split, size=200, seed=0):
            m = re.fullmatch(r"reverse ([0-9]+) =", item["prompt"])
            assert m, item
            digits = m.group(1)
            lengths.add(len(digits))
            assert item["answer"] == "".join(reversed(digits)) == item["demonstration"]
        assert lengths == set(range(lo, hi + 1))


def test_add_answers_and_split_ranges():
    for split, (lo, hi) in (("train", (0, 99)), ("heldout", (100, 199))):
        operands = []
        for item in SyntheticTask(kind="add", split=split, size=300, seed=0):
            m = re.fullmatch(r"add ([0-9]+)\+([0-9]+) =", item["prompt"])
            assert m, item
            a, b = int(m.group(1)), int(m.group(2))
            operands += [a, b]
            assert item["answer"] == str(a + b) == item["demonstration"]
        assert lo <= min(operands) and max(operands) <= hi
        assert max(operands) - min(operands) > (hi - lo) // 2  # the range is actually used


def test_kind_arguments_and_errors():
    task = SyntheticTask(kind="reverse", size=20, train_lengths=(2, 2), heldout_lengths=(9, 9))
    assert all(len(x["answer"]) == 2 for x in task)
    with pytest.raises(ValueError, match=r"known kinds: \['add', 'reverse'\]"):
        SyntheticTask(kind="mul")
    with pytest.raises(ValueError, match="overlap"):
        SyntheticTask(kind="add", train_range=(0, 50), heldout_range=(50, 60))
    with pytest.raises(ValueError, match="fields are"):
        SyntheticTask(kind="add", lengths=(1, 2))
    with pytest.raises(ValueError, match="split='test'"):
        SyntheticTask(split="test")
    with pytest.raises(ValueError, match="size=0"):
        SyntheticTask(size=0)
    with pytest.raises(IndexError, match="size 3"):
        SyntheticTask(size=3)[3]
    assert set(KINDS) == {"reverse", "add"}


def test_score_examples():
    assert score("27153", "27153") == 1.0
    assert score("  27153\n", "27153") == 1.0
    assert score("2715", "27153") == pytest.approx(0.1 + 0.9 * 4 / 5)  # one digit missing
    assert score("271539", "27153") == pytest.approx(0.1 + 0.9 * 5 / 6)  # one digit extra
    assert score("27150", "27153") == pytest.approx(0.1 + 0.9 * 4 / 5)  # one digit wrong
    assert score("27 153", "27153") == pytest.approx(0.9 * 2 / 6)  # not a digit string
    assert score("", "27153") == 0.0
    assert score("9", "27153") == pytest.approx(0.1)  # format credit only
    with pytest.raises(ValueError, match="answer="):
        score("1", "")


@given(st.text(alphabet="0123456789 x", max_size=9), st.text(alphabet="0123456789", min_size=1))
def test_score_is_in_unit_interval_and_one_only_when_exact(completion, answer):
    s = score(completion, answer)
    assert 0.0 <= s <= 1.0
    assert (s == 1.0) == (completion.strip() == answer)


def test_synthetic_reward_follows_the_protocol():
    rewards = synthetic_reward(["p", "q"], ["12", "3"], answer=["12", "4"], extra=[1, 2])
    assert rewards == [1.0, pytest.approx(0.1)]
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        synthetic_reward(["p", "q"], ["12", "3"], answer=["12"])


def test_wrong_demonstrations_are_deterministic_evenly_spread_and_wrong():
    from giftjax.data.synthetic import is_wrong_demonstration, wrong_answer

    clean = SyntheticTask(kind="reverse", split="train", size=400, seed=3)
    noisy = SyntheticTask(
        kind="reverse", split="train", size=400, seed=3, wrong_demonstrations=0.25
    )
    wrong = [i for i in range(400) if noisy[i]["demonstration"] != noisy[i]["answer"]]
    for i in range(400):
        assert noisy[i]["prompt"] == clean[i]["prompt"]
        assert noisy[i]["answer"] == clean[i]["answer"]  # the reward still checks the truth
        if i in wrong:
            assert noisy[i]["demonstration"] == wrong_answer(clean[i]["answer"])
            assert score(noisy[i]["demonstration"], noisy[i]["answer"]) == pytest.approx(0.1)
    assert wrong == [i for i in range(400) if is_wrong_demonstration(i, 0.25)]
    # Evenly spread: every window of n consecutive items holds 0.25 n wrong ones, +-3.
    for n in (8, 16, 100, 400):
        for start in range(0, 400 - n + 1):
            count = sum(start <= i < start + n for i in wrong)
            assert abs(count - 0.25 * n) <= 3, (start, n, count)
    assert all(
        x["demonstration"] != x["answer"] for x in SyntheticTask(size=50, wrong_demonstrations=1.0)
    )
    assert wrong_answer("0919") == "1020"
    with pytest.raises(ValueError, match=r"wrong_demonstrations=1\.5"):
        SyntheticTask(wrong_demonstrations=1.5)
