"""Checkpointer (orbax), check_config and StopSignal.

Restored arrays are compared bit for bit (bfloat16 and PRNG keys through their raw bits): a
checkpoint stores bytes, so there is no tolerance to argue about.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from giftjax.train.checkpoint import Checkpointer
from giftjax.train.run_config import check_config
from giftjax.train.stop import StopSignal

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bits(x):
    """Raw bits of a leaf: typed keys through key_data, arrays as bytes with dtype and shape."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return ("key", str(x.dtype), np.asarray(jax.random.key_data(x)).tobytes())
    if isinstance(x, (jax.Array, np.ndarray)):
        a = np.asarray(x)
        return (str(a.dtype), a.shape, a.tobytes())
    return (type(x).__name__, x)


def _assert_identical(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    flat = jax.tree_util.tree_flatten_with_path(restored)[0]
    for (path, r), e in zip(flat, jax.tree.leaves(expected), strict=True):
        assert _bits(r) == _bits(e), f"leaf {jax.tree_util.keystr(path)} differs"


def _abstract(tree, shardings=None):
    """ShapeDtypeStructs with shardings (what the trainer builds with jax.eval_shape).

    Python ints become 0, to show that the checkpoint's value wins.
    """
    if shardings is None:
        shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), tree)
    return jax.tree.map(
        lambda x, sh: (
            0 if isinstance(x, int) else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
        ),
        tree,
        shardings,
    )


def _state(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    params = {
        "embed": jax.random.normal(k[0], (16, 8), jnp.float32),
        "layers": {
            "w": jax.random.normal(k[1], (2, 8, 8), jnp.float32).astype(jnp.bfloat16),
            "scale": jnp.arange(8, dtype=jnp.int32),
        },
    }
    return {
        "step": 7,  # a Python int
        "params": params,
        "opt_state": optax.adamw(1e-3).init(params),  # NamedTuples, int32 count
        "rng": jax.random.key(seed + 11),  # typed threefry key
        "rng_rbg": jax.random.key(seed + 12, impl="rbg"),
        "extra": (jnp.float32(0.5), [jnp.ones((3,), jnp.bfloat16)]),
    }


def test_round_trip_nested_pytree(tmp_path):
    state = _state()
    with Checkpointer(str(tmp_path / "ckpt"), every=1, keep=3, async_save=False) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(7, state)
        assert ckpt.latest_step() == 7
        restored, data = ckpt.restore(7, _abstract(state))
    assert data is None
    assert restored["step"] == 7 and isinstance(restored["step"], int)
    assert restored["rng"].dtype == state["rng"].dtype
    assert restored["rng_rbg"].dtype == state["rng_rbg"].dtype
    _assert_identical(restored, state)
    # The restored key draws the same numbers.
    np.testing.assert_array_equal(
        jax.random.normal(restored["rng"], (4,)), jax.random.normal(state["rng"], (4,))
    )


def test_keep_and_every(tmp_path):
    state = {"x": jnp.arange(4.0)}
    with Checkpointer(str(tmp_path), every=2, keep=2, async_save=False) as ckpt:
        saved = [ckpt.save(s, state) for s in range(1, 9)]
        assert saved == [False, True] * 4
        assert [ckpt.should_save(s) for s in range(1, 5)] == [False, True, False, True]
        assert ckpt.all_steps() == [6, 8]
        assert ckpt.save(9, state, force=True)
        assert ckpt.all_steps() == [8, 9]
        # A stop request right after a save (or a step going backwards) saves nothing.
        assert not ckpt.save(9, state, force=True)
        assert not ckpt.save(4, state, force=True)
        assert ckpt.all_steps() == [8, 9]


def test_async_save_then_wait(tmp_path):
    state = _state(1)
    ckpt = Checkpointer(str(tmp_path), every=1, keep=2, async_save=True)
    assert ckpt.save(1, state)
    ckpt.wait()
    assert ckpt.latest_step() == 1
    assert ckpt.save(2, _state(2), data_state={"pos": 2})
    ckpt.close()
    again = Checkpointer(str(tmp_path), every=1, keep=2)
    assert again.latest_step() == 2
    restored, data = again.restore(2, _abstract(_state(2)))
    _assert_identical(restored, _state(2))
    assert data == {"pos": 2}
    again.close()


@pytest.mark.parametrize(
    "data_state",
    [
        None,
        {"next_index": 12, "epoch": 0, "files": ["a", "b"], "nested": {"seed": 3, "p": 0.25}},
        b'{"grain": 1}\x00\xff\x10 raw bytes',
    ],
    ids=["none", "mapping", "bytes"],
)
def test_data_state_round_trip(tmp_path, data_state):
    with Checkpointer(str(tmp_path), every=1, keep=1, async_save=False) as ckpt:
        ckpt.save(3, {"x": jnp.zeros(2)}, data_state=data_state)
        _, restored = ckpt.restore(3, {"x": jax.ShapeDtypeStruct((2,), jnp.float32)})
    assert restored == data_state
    assert type(restored) is type(data_state)


@pytest.mark.parametrize("kind", ["dataset_iterator", "data_loader"])
def test_grain_iterator_resumes_where_it_was(tmp_path, kind):
    grain = pytest.importorskip("grain", reason="grain is in the [data] extra")
    if kind == "dataset_iterator":  # get_state() -> dict
        make = lambda: iter(grain.MapDataset.range(20).shuffle(seed=3).to_iter_dataset())
    else:  # get_state() -> bytes
        sampler = grain.samplers.IndexSampler(20, shuffle=True, seed=3, num_epochs=1)
        make = lambda: iter(
            grain.DataLoader(data_source=list(range(20)), sampler=sampler, worker_count=0)
        )
    it = make()
    for _ in range(5):
        next(it)
    with Checkpointer(str(tmp_path), every=1, keep=1, async_save=False) as ckpt:
        ckpt.save(5, {"x": jnp.zeros(1)}, data_state=it.get_state())
        _, data_state = ckpt.restore(5, {"x": jax.ShapeDtypeStruct((1,), jnp.float32)})
    expected = [int(next(it)) for _ in range(5)]
    resumed = make()
    resumed.set_state(data_state)
    assert [int(next(resumed)) for _ in range(5)] == expected


def test_data_state_not_json_is_refused(tmp_path):
    with Checkpointer(str(tmp_path), every=1, keep=1, async_save=False) as ckpt:
        with pytest.raises(TypeError, match="data_state must be JSON-serialisable"):
            ckpt.save(1, {"x": jnp.zeros(2)}, data_state={"obj": object()})
        with pytest.raises(TypeError, match="mapping, bytes or None, got list"):
            ckpt.save(1, {"x": jnp.zeros(2)}, data_state=[1, 2])


def test_restore_places_arrays_with_shardings(tmp_path):
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    saved_specs = {"w": P("data", "model"), "b": P("model"), "k": P(), "c": P()}
    state = {
        "w": jnp.arange(64, dtype=jnp.float32).reshape(8, 8) / 7,
        "b": jnp.arange(8, dtype=jnp.float32).astype(jnp.bfloat16),
        "k": jax.random.key(5),
        "c": jnp.int32(-3),
    }
    state = {n: jax.device_put(x, NamedSharding(mesh, saved_specs[n])) for n, x in state.items()}
    with Checkpointer(str(tmp_path), every=1, keep=1, async_save=True) as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
        # Same shardings as saved.
        same = {n: NamedSharding(mesh, s) for n, s in saved_specs.items()}
        restored, _ = ckpt.restore(1, _abstract(state, same))
        _assert_identical(restored, state)
        for n in state:
            assert restored[n].sharding == same[n], n
        # Other shardings (another mesh layout): values identical, placed as asked.
        mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
        other = {
            "w": NamedSharding(mesh2, P("model", None)),
            "b": NamedSharding(mesh2, P()),
            "k": NamedSharding(mesh2, P()),
            "c": NamedSharding(mesh2, P()),
        }
        moved, _ = ckpt.restore(1, _abstract(state, other))
        _assert_identical(moved, state)
        for n in state:
            assert moved[n].sharding == other[n], n


def test_restore_missing_step_names_the_steps(tmp_path):
    with Checkpointer(str(tmp_path), every=1, keep=2, async_save=False) as ckpt:
        ckpt.save(2, {"x": jnp.zeros(1)})
        with pytest.raises(FileNotFoundError, match=r"step 5 .* finished steps: \[2\]"):
            ckpt.restore(5, {"x": jax.ShapeDtypeStruct((1,), jnp.float32)})


@pytest.mark.parametrize("field,value", [("every", 0), ("keep", -1), ("every", 2.0)])
def test_bad_arguments(tmp_path, field, value):
    kwargs = {"every": 1, "keep": 1, field: value}
    with pytest.raises(ValueError, match=f"checkpoint.{field} must be an int >= 1, got {value!r}"):
        Checkpointer(str(tmp_path), **kwargs)


def test_latest_step_ignores_unfinished_tmp_dir(tmp_path):
    directory = tmp_path / "ckpt"
    state = {"x": jnp.arange(3.0)}
    with Checkpointer(str(directory), every=1, keep=3, async_save=False) as ckpt:
        ckpt.save(1, state)
        # What a crash in the middle of an async save of step 2 leaves behind.
        partial = directory / "2.orbax-checkpoint-tmp" / "state"
        partial.mkdir(parents=True)
        (partial / "manifest.ocdbt").write_bytes(b"\x00" * 10)
        assert ckpt.latest_step() == 1
    with Checkpointer(str(directory), every=1, keep=3) as ckpt:
        assert ckpt.latest_step() == 1
        restored, _ = ckpt.restore(1, _abstract(state))
        _assert_identical(restored, state)
        assert ckpt.save(2, {"x": jnp.arange(3.0) + 1})  # the step can be saved again
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import jax.numpy as jnp
    from giftjax.train.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], every=1, keep=5, async_save=True)
    ckpt.save(1, {"x": jnp.full((4, 1024, 1024), 1.0)})
    ckpt.wait()
    ckpt.save(2, {"x": jnp.full((4, 1024, 1024), 2.0)})
    print("started", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.e2e
def test_kill_during_async_save_keeps_previous_checkpoint(tmp_path):
    directory = str(tmp_path / "ckpt")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, directory],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        proc.kill()  # SIGKILL, while step 2 may still be being written
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    with Checkpointer(directory, every=1, keep=5) as ckpt:
        latest = ckpt.latest_step()
        assert latest in (1, 2)  # step 2 if its write happened to finish before the kill
        abstract = {"x": jax.ShapeDtypeStruct((4, 1024, 1024), jnp.float32)}
        for step in ckpt.all_steps():
            restored, _ = ckpt.restore(step, abstract)
            np.testing.assert_array_equal(np.asarray(restored["x"]), float(step))


# --- check_config -----------------------------------------------------------------------------


def _config():
    return {
        "seed": 0,
        "model": {"name": "tiny", "remat": True, "dtype": "bfloat16"},
        "algo": {"name": "gift", "beta": 0.1},
        "mesh": {"shape": (1, 8)},
        "train": {"steps": 100},
        "log": {"every": 10},
        "checkpoint": {"every": 50, "keep": 2},
    }


def test_check_config_writes_then_accepts_same(tmp_path):
    workdir = tmp_path / "run"
    check_config(str(workdir), _config())
    text = (workdir / "config.json").read_text()
    assert json.loads(text) == json.loads(json.dumps(_config()))
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    check_config(str(workdir), _config())  # same config (tuple vs list after JSON) resumes
    check_config(str(workdir), ml_collections.ConfigDict(_config()))


def test_check_config_names_each_differing_key(tmp_path):
    check_config(str(tmp_path), _config())
    changed = _config()
    changed["algo"]["beta"] = 0.2
    changed["algo"]["preset"] = "author"
    del changed["model"]["remat"]
    changed["mesh"]["shape"] = (2, 4)
    changed["train"]["steps"] = 200  # allowed
    with pytest.raises(ValueError) as err:
        check_config(str(tmp_path), changed)
    msg = str(err.value)
    assert "algo.beta: 0.1 -> 0.2" in msg
    assert 'algo.preset: added ("author")' in msg
    assert "model.remat: removed (was true)" in msg
    assert "mesh.shape: [1, 8] -> [2, 4]" in msg
    assert "train.steps" not in msg.split("Use a new")[0]
    assert "new --workdir" in msg and "revert" in msg
    # Nothing was overwritten.
    assert json.loads((tmp_path / "config.json").read_text())["algo"]["beta"] == 0.1


def test_check_config_allows_resumable_keys(tmp_path):
    check_config(str(tmp_path), _config())
    changed = _config()
    changed["train"]["steps"] = 300
    changed["log"] = {"every": 5, "wandb": {"project": "p"}}
    changed["checkpoint"]["keep"] = 5
    check_config(str(tmp_path), changed)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["train"]["steps"] == 300 and stored["log"]["every"] == 5
    changed["checkpoint"]["every"] = 10  # not in the allow-list
    with pytest.raises(ValueError, match=r"checkpoint.every: 50 -> 10"):
        check_config(str(tmp_path), changed)


# --- StopSignal -------------------------------------------------------------------------------


def _wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_stop_signal_sigterm_sets_flag_and_restores_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: stop.requested)
        assert stop.received == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before


def test_stop_signal_second_sigint_interrupts():
    with pytest.raises(KeyboardInterrupt):
        with StopSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert _wait_for(lambda: stop.requested)
            assert stop.received == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(lambda: False, seconds=2.0)  # the handler raises in here


def test_stop_signal_outside_main_thread_is_a_noop():
    before = signal.getsignal(signal.SIGTERM)
    result = {}

    def enter():
        with pytest.warns(RuntimeWarning, match="main thread"):
            with StopSignal() as stop:
                result["handler"] = signal.getsignal(signal.SIGTERM)
                result["requested"] = stop.requested

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert result == {"handler": before, "requested": False}
