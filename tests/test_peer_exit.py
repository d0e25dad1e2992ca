"""A process of a multi-process job that ends with a non-zero exit code (2: an input error on
that process only) while its peer waits in a collective: the peer watchdog ends the survivor
at once with one line naming the process and its code, and the same exit code. It used to
treat the exit as a clean one: the survivor waited in the collective (and the failed process
in JAX's shutdown, waiting for it) far past GUARD_JAX_PEER_TIMEOUT."""

from __future__ import annotations

import os

import pytest

from processes import finish, start

WORKER = os.path.join(os.path.dirname(__file__), "peer_exit_worker.py")


@pytest.mark.parametrize("failing, code", [(1, 2), (0, 2), (1, 3)])
def test_survivor_names_the_peer_and_its_exit_code(failing, code):
    """Process `failing` ends with `code` (2: its InputError's one line; 3: a return code);
    process 0 holds the job's key-value store, so both directions are run."""
    procs = start(WORKER, [str(failing), str(code)], processes=2,
                  env={"GUARD_JAX_PEER_TIMEOUT": "10"}, init_timeout=60)
    results = finish(procs, timeout=60)
    survivor = 1 - failing
    rc, _, err = results[failing]
    assert rc == code, err[-3000:]
    assert err.strip().splitlines() == ([
        "guard-jax peer-exit-test: data.jsonl record r7 field 'label': unknown label 'maybe'"]
        if code == 2 else [])
    rc, _, err = results[survivor]
    assert rc == code, err[-3000:]
    why = "bad input; its log names it" if code == 2 else "see its log"
    assert err.strip().splitlines() == [
        f"guard_jax: process {survivor} of 2: process {failing} exited with code {code} ({why}); "
        "exiting with the same code instead of waiting in a collective that cannot complete."]
