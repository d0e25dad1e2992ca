"""The RL algorithm's families as registries of pure array functions (docs/grpo.md#algorithm):
advantage estimators, policy losses, KL estimators, loss aggregation, rollout correction.
`training/grpo_loss.py` composes them into the loss the trainer differentiates."""
