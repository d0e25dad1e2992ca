"""The Pathways (single-controller) start-up: guard_jax/pathways.py, docs/pathways.md. No
Pathways cluster here: a stand-in `pathwaysutils` module records the call."""

import sys
import types

import pytest

from guard_jax import cli, pathways
from guard_jax.errors import InputError

PROXY = {"JAX_PLATFORMS": "proxy", "JAX_BACKEND_TARGET": "grpc://127.0.0.1:29000"}


@pytest.fixture
def stand_in(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "pathwaysutils",
                        types.SimpleNamespace(initialize=lambda: calls.append("init")))
    return calls


def test_proxy_backend_initialises_pathwaysutils_once(stand_in):
    assert pathways.initialize(PROXY) is True
    assert stand_in == ["init"]
    assert pathways.initialize({"JAX_PLATFORMS": "cpu"}) is False
    assert pathways.initialize({}) is False
    assert stand_in == ["init"]


def test_proxy_without_target_or_package_is_one_clear_error(monkeypatch, stand_in):
    with pytest.raises(InputError, match="needs JAX_BACKEND_TARGET"):
        pathways.initialize({"JAX_PLATFORMS": "proxy"})
    monkeypatch.setitem(sys.modules, "pathwaysutils", None)  # not installed
    with pytest.raises(InputError, match="pip install pathwaysutils"):
        pathways.initialize(PROXY)


def test_cli_under_the_proxy_skips_jax_distributed(monkeypatch, stand_in, capsys):
    """A Pathways job is one process: the CLI calls pathwaysutils, never jax.distributed
    (the command then fails on its own missing input, as it would anywhere)."""
    from guard_jax import distributed
    for k, v in PROXY.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(distributed, "initialize",
                        lambda *a, **k: pytest.fail("jax.distributed under Pathways"))
    rc = cli.main(["export", "--checkpoint", "/nonexistent/ckpt", "--out", "/nonexistent/out"])
    assert stand_in == ["init"]
    assert rc == 2 and capsys.readouterr().err.startswith("guard-jax export: ")
