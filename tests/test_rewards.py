"""giftjax.rewards: registry, built-in rewards, RewardRunner with thread and process workers.

Rewards that misbehave live in tests/reward_fns.py (importable by the worker processes).
Time limits are 0.5 s; each test takes a few seconds at most.
"""

import json
import math
import os
import threading
import time

import numpy as np
import pytest
import reward_fns
from reward_fns import SCALE, TRIGGER, expected

from giftjax import rewards
from giftjax.rewards import registry
from giftjax.rewards.call import BAD_OUTPUT, NON_FINITE, check_output

TIME_LIMIT = 0.5
EXECUTORS = [
    pytest.param({"executor": "thread"}, id="thread"),
    pytest.param({"executor": "process", "start_method": "forkserver"}, id="forkserver"),
    pytest.param({"executor": "process", "start_method": "spawn"}, id="spawn"),
]
F32_EPS = 2.0**-24  # float32 unit roundoff


@pytest.fixture(autouse=True)
def _release_hung_threads():
    """Lets calls hung on purpose in this process return once a test is over."""
    reward_fns.RELEASE.clear()
    yield
    reward_fns.RELEASE.set()


@pytest.fixture
def fresh_registry(monkeypatch):
    """A private copy of the registry, so registrations made in a test do not leak."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


# ----------------------------------------------------------------------------- registry


def test_builtins_are_registered():
    assert {"exact_match", "length"} <= set(rewards.names())
    assert rewards.names() == sorted(rewards.names())
    assert rewards.get("length") is rewards.builtin.length


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown reward 'nope'") as info:
        rewards.get("nope")
    for name in ("exact_match", "length", "tests.raises"):
        assert repr(name) in str(info.value)


@pytest.mark.usefixtures("fresh_registry")
def test_duplicate_name_names_both_functions():
    @rewards.register("tests.dup")
    def first(prompts, completions):
        return [0.0] * len(completions)

    def second(prompts, completions):
        return [1.0] * len(completions)

    with pytest.raises(ValueError, match="already taken") as info:
        rewards.register("tests.dup")(second)
    assert "first" in str(info.value) and "second" in str(info.value)
    assert rewards.get("tests.dup") is first


@pytest.mark.usefixtures("fresh_registry")
def test_reregistering_the_same_definition_replaces_it():
    def define():
        @rewards.register("tests.reimported")
        def fn(prompts, completions):
            return [0.0] * len(completions)

        return fn

    define()
    again = define()  # as when a module is imported again: same module and qualified name
    assert rewards.get("tests.reimported") is again


@pytest.mark.parametrize("name", ["", None, 3])
def test_register_rejects_bad_names(name):
    with pytest.raises(ValueError, match="non-empty string"):
        rewards.register(name)


# ----------------------------------------------------------------------------- built-ins


def test_exact_match():
    completions = [" 42 \nbecause", "42", "4 2", "\n\n 7\n", "", "42.0"]
    answers = ["42", " 42 ", "42", 7, "", "42"]
    got = rewards.get("exact_match")(["p"] * 6, completions, answer=answers, other=[0] * 6)
    assert got == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_length():
    assert rewards.get("length")(["p", "q"], ["abc", ""], answer=["x", "y"]) == [-3 / 1000, 0.0]


# ----------------------------------------------------------------------------- output checks


@pytest.mark.parametrize(
    ("output", "value"),
    [([1.5], 1.5), ((2,), 2.0), (np.array([0.25]), 0.25), ([True], 1.0), ([np.int64(-3)], -3.0)],
)
def test_check_output_accepts_one_real_number(output, value):
    assert check_output(output) == (value, None, None)


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        ([math.nan], NON_FINITE),
        ([-math.inf], NON_FINITE),
        ([1e39], NON_FINITE),  # finite in float64, inf in float32
        ([1.0, 2.0], BAD_OUTPUT),
        ([], BAD_OUTPUT),
        (1.0, BAD_OUTPUT),
        ("1", BAD_OUTPUT),
        (["1"], BAD_OUTPUT),
        ([None], BAD_OUTPUT),
        ([1j], BAD_OUTPUT),
        (np.array([[1.0]]), BAD_OUTPUT),
        ({"a": 1.0}, BAD_OUTPUT),
    ],
)
def test_check_output_rejects(output, kind):
    outcome = check_output(output)
    assert outcome.value == 0.0 and outcome.kind == kind and outcome.error


# ----------------------------------------------------------------------------- runner


def test_weighted_sum_matches_arithmetic():
    weights = {"length": 0.5, "exact_match": 2.0, "tests.value": -0.75}
    completions = ["7", "seven", "7\nso", ""]
    answer = ["7", "7", "7", "x"]
    value = [0.1, -2.5, 1e-3, 3.0]
    with rewards.RewardRunner(weights, time_limit=5.0, workers=2) as run:
        result = run(["p"] * 4, completions, {"answer": answer, "value": value})
    per_fn = {
        "length": [-1 / 1000, -5 / 1000, -4 / 1000, 0 / 1000],
        "exact_match": [1.0, 0.0, 1.0, 0.0],
        "tests.value": value,
    }
    assert result.errors == 0
    assert list(result.per_fn) == list(weights)
    for name, values in per_fn.items():
        assert result.per_fn[name].dtype == np.float32
        np.testing.assert_array_equal(result.per_fn[name], np.float32(values), err_msg=name)
    terms = np.array([[weights[n] * per_fn[n][i] for n in weights] for i in range(4)])
    exact = terms.sum(axis=1)
    # Each per_fn value is rounded to float32 once (relative F32_EPS), the float64 sum adds
    # ~1e-16, and the total is rounded to float32 once more.
    bound = F32_EPS * np.abs(terms).sum(axis=1) + F32_EPS * np.abs(exact)
    assert result.total.dtype == np.float32 and result.total.shape == (4,)
    assert np.all(np.abs(result.total.astype(np.float64) - exact) <= bound), (result.total, exact)


@pytest.mark.parametrize("kwargs", EXECUTORS)
def test_failures_score_zero_on_their_rows_only(kwargs, tmp_path):
    names = ["tests.raises", "tests.hangs", "tests.nan", "tests.wrong_length", "tests.not_number"]
    weights = {name: float(i + 1) for i, name in enumerate(names)}
    weights["tests.value"] = 0.5
    completions = ["ok", "raise", "hang", "nan", "long", "str", "fine!"]
    prompts = [f"prompt {i}" for i in range(len(completions))]
    value = np.arange(len(completions), dtype=np.float64)  # NumPy scalars reach the log
    log = tmp_path / "logs" / "reward_errors.jsonl"
    with rewards.RewardRunner(
        weights, time_limit=TIME_LIMIT, workers=4, error_log=log, **kwargs
    ) as run:
        result = run(prompts, completions, {"value": value, "tag": [{"k"}] * 7}, step=7)
        again = run(prompts[:1], completions[:1], {"value": value[:1], "tag": [None]}, step=8)

    assert result.errors == len(names)
    want = {name: expected(name, completions) for name in names}
    want["tests.value"] = value
    for name, values in want.items():
        np.testing.assert_array_equal(result.per_fn[name], np.float32(values), err_msg=name)
    exact = [sum(weights[n] * want[n][i] for n in weights) for i in range(len(completions))]
    np.testing.assert_allclose(result.total, exact, rtol=4 * F32_EPS, atol=0)
    assert again.errors == 0 and again.per_fn["tests.hangs"][0] == SCALE["tests.hangs"] * 2

    records = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = {
        "tests.raises": "raised",
        "tests.hangs": "timeout",
        "tests.nan": "non_finite",
        "tests.wrong_length": "bad_output",
        "tests.not_number": "bad_output",
    }
    assert [r["reward"] for r in records] == names  # one line per failure, in row order
    for r in records:
        row = completions.index(TRIGGER[r["reward"]])
        assert r["kind"] == kinds[r["reward"]]
        assert r["step"] == 7
        assert r["prompt"] == prompts[row] and r["completion"] == completions[row]
        assert r["columns"] == {"value": value[row], "tag": "{'k'}"}  # repr: not JSON
        assert isinstance(r["error"], str) and 0 < len(r["error"]) <= 2000
    assert "ZeroDivisionError" in records[0]["error"]


def test_no_log_without_error_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with rewards.RewardRunner({"tests.raises": 1.0}, time_limit=5.0) as run:
        assert run(["p"], ["raise"]).errors == 1
    assert list(tmp_path.iterdir()) == []


def test_log_truncates_long_texts(tmp_path):
    log = tmp_path / "errors.jsonl"
    long = "x" * 20000
    with rewards.RewardRunner({"tests.raises": 1.0}, time_limit=5.0, error_log=log) as run:
        run([long], ["raise"], {"note": [long]})
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["prompt"] == "x" * 10000 and record["columns"]["note"] == "x" * 10000


def test_thread_executor_replaces_hung_workers():
    completions = ["hang", "a", "bb", "ccc", "dddd"]
    workers = 2
    with rewards.RewardRunner(
        {"tests.hangs": 1.0}, time_limit=TIME_LIMIT, workers=workers, executor="thread"
    ) as run:
        for _ in range(4):  # without replacement the pool would run dry by the third batch
            start = time.monotonic()
            result = run(["p"] * 5, completions)
            elapsed = time.monotonic() - start
            assert elapsed < TIME_LIMIT + 1.0, elapsed
            assert result.errors == 1
            np.testing.assert_array_equal(
                result.per_fn["tests.hangs"], np.float32(expected("tests.hangs", completions))
            )
            assert len(run._pool.idle_workers()) == workers
    live = [t for t in threading.enumerate() if t.name.startswith("giftjax-reward-")]
    assert len(live) >= 4  # the abandoned ones still sleep; the pool's own were told to stop


def _is_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_process_executor_kills_late_and_dead_workers(tmp_path):
    pid_file = tmp_path / "pid"
    weights = {"tests.hangs": 1.0, "tests.exits": 1.0}
    completions = ["hang", "a", "exit", "bb"]
    with rewards.RewardRunner(weights, time_limit=TIME_LIMIT, workers=2, executor="process") as run:
        pids_before = set(run._pool.pids())
        result = run(["p"] * 4, completions, {"pid_file": [str(pid_file), "", "", ""]})
        hung_pid = int(pid_file.read_text())
        assert hung_pid in pids_before
        assert not _is_running(hung_pid)  # killed and reaped
        assert result.errors == 2
        for name in weights:
            np.testing.assert_array_equal(
                result.per_fn[name], np.float32(expected(name, completions)), err_msg=name
            )
        pids_after = run._pool.pids()
        assert len(pids_after) == 2 and hung_pid not in pids_after
        # The replacements work: a whole batch scores with no error.
        assert run(["p"] * 3, ["a", "bb", "c"]).errors == 0
        pids_open = run._pool.pids()
    assert not any(_is_running(pid) for pid in pids_open)  # close() stops every worker


@pytest.mark.usefixtures("fresh_registry")
def test_process_executor_needs_importable_registration():
    @rewards.register("tests.local")
    def local(prompts, completions):
        return [0.0] * len(completions)

    with pytest.raises(RuntimeError, match="not registered in a worker process"):
        rewards.RewardRunner({"tests.local": 1.0}, workers=1, executor="process")


def test_empty_batch():
    with rewards.RewardRunner({"length": 1.0}, time_limit=5.0) as run:
        result = run([], [], {"answer": []})
    assert result.total.shape == (0,) and result.per_fn["length"].shape == (0,)
    assert result.errors == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": {"nope": 1.0}}, "unknown reward 'nope'; known rewards: .*'length'"),
        ({"weights": {"length": math.nan}}, r"weights\['length'\] must be a finite number"),
        ({"weights": {"length": math.inf}}, "finite number"),
        ({"weights": {"length": "1"}}, "finite number"),
        ({"weights": {}}, "non-empty mapping"),
        ({"time_limit": 0.0}, "time_limit"),
        ({"time_limit": math.inf}, "time_limit"),
        ({"workers": 0}, "workers"),
        ({"workers": 1.5}, "workers"),
        ({"executor": "fiber"}, "executor must be one of"),
        ({"executor": "process", "start_method": "fork"}, "start_method"),
        ({"start_method": "spawn"}, "start_method applies to executor='process'"),
    ],
)
def test_runner_rejects_bad_arguments(kwargs, match):
    kwargs = {"weights": {"length": 1.0}, **kwargs}
    with pytest.raises(ValueError, match=match):
        rewards.RewardRunner(kwargs.pop("weights"), **kwargs)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((["p"], ["a", "b"]), "1 prompts for 2 completions"),
        ((["p"], ["a"], {"answer": [1, 2]}), "column 'answer' has 2 values"),
        ((["p"], ["a"], {"prompts": ["x"]}), "reserved"),
        ((["p"], [3]), r"completions\[0\] must be a str"),
    ],
)
def test_call_rejects_bad_batches(args, match):
    with rewards.RewardRunner({"length": 1.0}, workers=1) as run:
        with pytest.raises(ValueError, match=match):
            run(*args)


def test_closed_runner_refuses_calls():
    run = rewards.RewardRunner({"length": 1.0}, workers=1)
    run.close()
    run.close()
    with pytest.raises(RuntimeError, match="closed"):
        run(["p"], ["a"])
