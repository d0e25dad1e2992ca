"""Parses `guard-jax bench ...` arguments (without the `bench` word) the way the CLI does, for
the bench tests."""

import argparse

from guard_jax.bench import add_arguments


def parse_bench(argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)
