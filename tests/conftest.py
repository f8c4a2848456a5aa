"""Test set-up: 8 fake CPU devices, CPU only, float32 matmuls at full precision.

The environment must be set before jax is first imported, which is why it lives
at the top of conftest (pytest imports it before any test module).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
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
