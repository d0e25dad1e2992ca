"""The single-controller path for TPU pods: Pathways on Cloud (docs/pathways.md).

Under Pathways one Python process, on a CPU host, drives every TPU of one or more slices
through the IFRT proxy: JAX is started with `JAX_PLATFORMS=proxy` and `JAX_BACKEND_TARGET`
naming the proxy, and `pathwaysutils.initialize()` (a PyPI package, not a dependency of
guard_jax) sets JAX up for it, including orbax's checkpoint handlers. To guard_jax the job is
then one process that sees every device of the slices: `jax.process_count() == 1`, nothing to
join with `jax.distributed`, every host-side decision taken once.
"""

from __future__ import annotations

import os

from guard_jax.errors import InputError


def requested(environ=None) -> bool:
    """Whether the job runs under Pathways' proxy backend (JAX_PLATFORMS names `proxy`)."""
    env = os.environ if environ is None else environ
    return "proxy" in [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",")]


def initialize(environ=None) -> bool:
    """`pathwaysutils.initialize()` when the job runs under Pathways; False (and nothing done)
    otherwise. Call before any device work."""
    env = os.environ if environ is None else environ
    if not requested(env):
        return False
    if not env.get("JAX_BACKEND_TARGET"):
        raise InputError("JAX_PLATFORMS=proxy needs JAX_BACKEND_TARGET, the Pathways proxy's "
                         "address (e.g. grpc://localhost:29000); see docs/pathways.md")
    try:
        import pathwaysutils
    except ImportError:
        raise InputError("JAX_PLATFORMS=proxy (Pathways) needs the pathwaysutils package: "
                         "pip install pathwaysutils (see docs/pathways.md)") from None
    pathwaysutils.initialize()
    return True
