"""Test set-up: CPU only, 8 fake devices, no network. Runs before anything imports jax."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(tempfile.gettempdir(), "guard_jax_tfds_tests"))
# Many tests (and the `guard-jax train` subprocesses they start) compile the same programs:
# XLA's persistent cache turns the repeats into disk reads. Keyed by the program, so it is safe.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "guard_jax_tests_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_enable_x64", False)
flags.FLAGS.mark_as_parsed()  # google/grain#1355: workers read absl flags
assert jax.device_count() == 8, jax.devices()
