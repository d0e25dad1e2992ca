"""Per-token KL estimators of the policy from the reference, and the KL coefficient controllers.

With d = logp - ref (the log-ratio of policy to reference, per sampled token), the estimators
of KL(pi || ref) from J. Schulman, "Approximating KL Divergence" (2020), spelled as verl's
`kl_penalty`:

  kl, k1          d                               unbiased, high variance, can be negative
  abs             |d|
  mse, k2         d^2 / 2                         low variance; its gradient is KL's gradient
  low_var_kl, k3  exp(-d) + d - 1 >= 0            unbiased, low variance; clamped to +-10 (verl)
  NAME+           the value of NAME with the gradient of k2 (straight through: k2 - sg(k2) +
                  sg(NAME)), verl's "+" variants, for an unbiased KL gradient in the loss

The log-ratio is clamped to +-LOG_RATIO_CLAMP before k2 and k3 (exp and square): finite
log-probs then always give a finite value and gradient, masked tokens included, and a token
past the clamp gets a zero gradient (verl and EasyR1 clamp k3's log-ratio to +-20 likewise).

Controllers (verl's `algorithm.kl_ctrl`, from Ziegler et al. 2019, "Fine-Tuning Language Models
from Human Preferences", Sec. 2.2): `fixed` keeps the coefficient; `adaptive` multiplies it
after each step by 1 + clip(KL / target - 1, -0.2, 0.2) n / horizon, with KL the step's mean
per-sequence token-mean KL and n its rollouts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from guard_jax.training.rl.registry import Registry

LOG_RATIO_CLAMP = 20.0
LOW_VAR_KL_CLAMP = 10.0

REGISTRY = Registry("kl_penalty")


def _clamped(d):
    return jnp.clip(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@REGISTRY.register("kl", "k1")
def k1(logp, ref_logp):
    return logp - ref_logp


@REGISTRY.register("abs")
def absolute(logp, ref_logp):
    return jnp.abs(logp - ref_logp)


@REGISTRY.register("mse", "k2")
def k2(logp, ref_logp):
    return 0.5 * jnp.square(_clamped(logp - ref_logp))


@REGISTRY.register("low_var_kl", "k3")
def k3(logp, ref_logp):
    d = _clamped(ref_logp - logp)
    return jnp.clip(jnp.exp(d) - d - 1.0, -LOW_VAR_KL_CLAMP, LOW_VAR_KL_CLAMP)


def _straight_through(forward):
    def estimator(logp, ref_logp):
        back = k2(logp, ref_logp)
        return back - jax.lax.stop_gradient(back) + jax.lax.stop_gradient(
            forward(logp, ref_logp))
    return estimator


for _name in list(REGISTRY):
    REGISTRY[_name + "+"] = _straight_through(REGISTRY[_name])


def kl_penalty(logp, ref_logp, kind: str = "low_var_kl"):
    """Per-token estimate [B, T] of KL(policy || reference) by the estimator `kind`."""
    return REGISTRY.get_fn(kind)(logp, ref_logp)


def sequence_kl(logp, ref_logp, weights, kind: str = "kl"):
    """[R] summed per-token KL over each response: verl's KL-in-reward subtracts
    coef * this from the scalar reward before the advantage estimator."""
    return jnp.sum(kl_penalty(logp, ref_logp, kind) * weights, axis=-1)


def mean_sequence_kl(logp, ref_logp, weights, kind: str = "kl") -> float:
    """The adaptive controller's KL: each response's token-mean KL, averaged over responses."""
    w = jnp.asarray(weights, jnp.float32)
    per_seq = sequence_kl(logp, ref_logp, w, kind) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)
    return float(jnp.mean(per_seq))


CONTROLLERS = ("fixed", "adaptive")


@dataclasses.dataclass
class KLController:
    """The KL-in-reward coefficient (`value`), kept or adapted after each step. Its state is
    `value`; the trainer saves it with each checkpoint and restores it on resume."""
    value: float
    kind: str = "fixed"
    target: float = 0.1
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.kind == "fixed":
            return
        if self.kind != "adaptive":
            raise ValueError(f"kl_ctrl_type {self.kind!r}; choose one of {CONTROLLERS}")
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon
