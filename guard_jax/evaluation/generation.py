"""The model side of `guard-jax eval --config`: load the model and turn a `PromptBatch` into raw
outputs with greedy decoding through `guard_jax.generate`.

A training checkpoint is evaluated through its HF export (`guard-jax export` into a temporary
directory), i.e. the very weights and tokenizer files that transformers or vLLM would load; this
path runs in one process. For a multi-host job, export once and pass `--hf-dir`: `load_hf` then
reads each process's shards only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def export_for_eval(checkpoint, out_dir, *, step: int | None = None) -> str:
    from guard_jax.training.hf_convert import export_checkpoint
    return str(export_checkpoint(checkpoint, Path(out_dir) / "hf", step=step, progress=False))


def load_tokenizer(path):
    if not path:
        raise ValueError("no tokenizer: set data.tokenizer_dir, or pass --hf-dir / --checkpoint "
                         "(whose export carries the tokenizer files)")
    from data_pipeline.local_files import load_tokenizer as load_local
    return load_local(path)


def decode_outputs(tokens, tokenizer, eos_token_ids) -> list[str]:
    """Text of each row of generated ids, up to (not including) its first EOS."""
    eos = set(int(i) for i in np.atleast_1d(eos_token_ids))
    out = []
    for row in np.asarray(tokens):
        stop = next((k for k, t in enumerate(row.tolist()) if t in eos), len(row))
        out.append(tokenizer.decode(row[:stop].tolist(), skip_special_tokens=True))
    return out


def generate_outputs(model, batch, *, tokenizer, max_new_tokens: int, mesh=None) -> list[str]:
    """Greedy raw outputs for one `PromptBatch` (every row, padding rows included)."""
    from guard_jax import generate
    eos = model.config.generation_eos_ids
    tokens = generate(model, batch.input_ids, attention_mask=batch.attention_mask,
                      pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                      max_new_tokens=max_new_tokens, temperature=0.0, eos_token_ids=eos,
                      mesh=mesh)
    return decode_outputs(tokens, tokenizer, eos)


def model_generate_fn(run, hf_dir, tokenizer):
    """A `GenerateFn` over the model in `hf_dir`, sharded by the config's mesh."""
    import jax

    import guard_jax
    from guard_jax.sharding import make_mesh
    mesh = None
    if jax.device_count() > 1:
        mesh = make_mesh({"data": run.mesh.data, "fsdp": run.mesh.fsdp,
                          "tensor": run.mesh.tensor})
        rows = mesh.shape["data"] * mesh.shape["fsdp"]
        if run.eval.batch_size % rows:
            raise ValueError(f"eval.batch_size {run.eval.batch_size} is not a multiple of the "
                             f"{rows} data x fsdp devices the batch is split over")
    model = guard_jax.load_hf(hf_dir, dtype=run.model.param_dtype, compute_dtype=run.model.dtype,
                              mesh=mesh)

    def fn(batch):
        return generate_outputs(model, batch, tokenizer=tokenizer,
                                max_new_tokens=run.eval.max_new_tokens, mesh=mesh)
    return fn
