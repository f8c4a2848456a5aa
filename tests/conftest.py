"""Test set-up: 8 fake CPU devices, CPU only, float32 matmuls at full precision.

The environment must be set before jax is first imported, which is why it lives
at the top of conftest (pytest imports it before any test module).
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=8"
# The tests' programs are tiny and each is compiled for a few calls, so the compile dominates:
# LLVM at -O0 compiles them about 1.5x faster (tests/test_train_loop.py). XLA still fixes the
# order of every reduction and emits no fast-math; what may change is rounding at the ulp level
# (contracted multiply-adds), which the precision-derived tolerances cover (tests/precision.py).
# The subprocesses of the end-to-end tests inherit it (tests/processes.py).
if "xla_backend_optimization_level" not in flags:
    flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags.strip()
# Compiled programs go to an on-disk cache that the xdist workers and the subprocesses of the
# end-to-end tests (which inherit this environment) share: the smoke recipe's train step that ten
# CLI runs compile is compiled once. JAX keys an entry by the program, the compile options, the
# devices and the jax version, so a hit is the same executable and results stay bit-identical.
# GIFTJAX_TEST_XLA_CACHE=off turns it off (for example to time a cold compile).
_cache = os.environ.get("GIFTJAX_TEST_XLA_CACHE", "")
if _cache != "off":
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR",
        _cache or os.path.join(tempfile.gettempdir(), f"giftjax-test-xla-cache-{os.getuid()}"),
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# libtpu (installed for ahead-of-time TPU compiles) looks for TPU hosts at start-up.
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# libtpu takes a machine-wide lock file; let parallel test processes compile for TPU too.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import hypothesis  # noqa: E402

# Each example compiles small jitted functions; keep the default budget modest and
# without deadlines (compile time varies with load).
hypothesis.settings.register_profile("giftjax", max_examples=40, deadline=None)
hypothesis.settings.load_profile("giftjax")
