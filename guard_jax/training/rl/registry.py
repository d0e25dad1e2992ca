"""A name -> function table with a `register` decorator, one per algorithm family."""

from __future__ import annotations


class Registry(dict):
    """`REGISTRY = Registry("policy loss")`; `@REGISTRY.register("gspo")` adds a function;
    `REGISTRY.get_fn(name)` looks one up with an error that lists the choices. The config's
    choice lists are the registries' keys (guard_jax/run_config.py)."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, *names: str):
        def add(fn):
            for name in names:
                if name in self:
                    raise ValueError(f"{self.what} {name!r} is registered twice")
                self[name] = fn
            return fn
        return add

    def get_fn(self, name: str):
        if name not in self:
            raise ValueError(f"{self.what} {name!r}; choose one of {tuple(self)}")
        return self[name]
