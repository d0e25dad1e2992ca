"""One process of tests/test_peer_exit.py: `guard-jax peer-exit-test FAILING CODE` through
`guard_jax.cli.main`, on a job of 2 processes with 1 fake CPU device each. Both pass a first
barrier (the collectives are set up); then process FAILING ends its command (CODE 2: an
InputError, else that return code) while the other waits in a second barrier it never passes."""

import os
import sys

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def add_arguments(p):
    p.add_argument("failing", type=int)
    p.add_argument("code", type=int)


def main(args):
    import jax
    from jax.experimental import multihost_utils

    from guard_jax.errors import InputError
    multihost_utils.sync_global_devices("both processes")
    if jax.process_index() == args.failing:
        if args.code == 2:
            raise InputError("data.jsonl record r7 field 'label': unknown label 'maybe'")
        return args.code
    multihost_utils.sync_global_devices("never passed")
    print("passed the barrier", flush=True)
    return 0


if __name__ == "__main__":
    from guard_jax import cli
    cli.COMMANDS["peer-exit-test"] = ("peer_exit_worker", "tests only")
    sys.exit(cli.main(["peer-exit-test", *sys.argv[1:]]))
