"""SFT end to end on the CPU: data build -> guard-jax train -> checkpoints, metrics, resume."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_pipeline.build import build_dataset
from guard_jax.run_config import load_config
from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir

CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tiny_sft.py")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        rec = {"uid": i, "question": f"Is request {i} harmful?", "verdict": "bad" if i % 2 else "ok",
               "target": f"<think>case {i}</think><result>Request: "
                         f"{'harmful' if i % 2 else 'unharmful'}</result>"}
        if i % 3 == 0:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), np.uint8)).save(buf, "PNG")
            (root / f"im{i}.png").write_bytes(buf.getvalue())
            rec["question"] = "<image>" + rec["question"]
            rec["pics"] = [f"im{i}.png"]
        rows.append(json.dumps(rec))
    (root / "d.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path_factory.mktemp("built")
    build_dataset("generic_jsonl", root / "d.jsonl", out, progress=False, echo=False,
                  options={"user_text_field": "question", "prompt_label_field": "verdict",
                           "images_field": "pics", "id_field": "uid", "target_field": "target",
                           "label_words": {"bad": "harmful", "ok": "unharmful"}})
    tok = write_qwen2_5_vl_tokenizer_dir(tmp_path_factory.mktemp("tok") / "qwen")
    return str(out), str(tok)


def _run(dataset, workdir, steps, **extra):
    from guard_jax.training.sft import train
    path, tok = dataset
    overrides = {"model.preset": "tiny_qwen", "model.dtype": "float32", "data.path": path,
                 "data.tokenizer_dir": tok, "data.seq_len": 384, "data.max_pixels": 84 * 84,
                 "train.global_batch": 4, "train.micro_batch": 2, "train.steps": steps,
                 "train.log_every": 1, "train.checkpoint_every": 1, "optim.lr": 1e-3,
                 "optim.schedule": "constant", "mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1,
                 **extra}
    run = load_config(CONFIG, [f"--config.{k}={v}" for k, v in overrides.items()])
    return train(run, str(workdir))


def _params(workdir, step):
    from guard_jax.training.checkpoint import Checkpointer
    import orbax.checkpoint as ocp
    d = os.path.join(workdir, str(step))
    assert os.path.isdir(d), os.listdir(workdir)
    return ocp.StandardCheckpointer().restore(os.path.join(d, "state"))


def test_sft_trains_checkpoints_and_resumes_exactly(dataset, tmp_path):
    full = _run(dataset, tmp_path / "full", steps=3)
    assert full["step"] == 6  # 3 updates x 2 micro-batches
    lines = [json.loads(x) for x in open(tmp_path / "full" / "metrics.jsonl")]
    assert [ln["step"] for ln in lines] == list(range(1, 7))
    assert all(np.isfinite(ln["loss"]) and ln["loss"] > 0 for ln in lines)
    assert os.listdir(tmp_path / "full" / "tensorboard")

    part = _run(dataset, tmp_path / "part", steps=2)  # stops after 2 updates ...
    assert part["step"] == 4
    again = _run(dataset, tmp_path / "part", steps=3)  # ... and resumes to 3
    assert again["step"] == 6
    a, b = _params(str(tmp_path / "full"), 6), _params(str(tmp_path / "part"), 6)
    assert a.keys() == b.keys()
    worst = max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)
    assert worst <= 1e-6, worst


def test_export_of_a_trained_checkpoint_loads_in_transformers(dataset, tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from guard_jax.cli import main as cli
    from guard_jax.models.qwen2_5_vl import load_hf
    _run(dataset, tmp_path / "run", steps=1)
    out = tmp_path / "hf"
    assert cli(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert (out / "tokenizer.json").is_file()  # copied from the run's tokenizer
    ours = load_hf(out, dtype="float32", progress=False)
    hf, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    ids = np.asarray([[151644, 872, 198, 9707, 11, 1879, 151645, 198]])
    ref = hf(input_ids=torch.as_tensor(ids)).logits.detach().numpy()
    assert np.abs(np.asarray(ours(ids)) - ref).max() <= 1e-4
    # the export holds the checkpoint's (trained) parameters
    saved = _params(str(tmp_path / "run"), 2)
    np.testing.assert_array_equal(np.asarray(saved["params.text.layers.q"]),
                                  np.asarray(ours.text.layers.q[...]))
    # import the export back: a step-0 checkpoint guard-jax train can resume
    ck = tmp_path / "imported"
    assert cli(["import", "--hf-dir", str(out), "--out", str(ck)]) == 0
    assert os.path.isdir(ck / "0")


def test_config_errors_list_valid_keys():
    with pytest.raises(KeyError, match="valid keys in this section"):
        load_config(CONFIG, ["--config.train.stepz=3"])
    with pytest.raises(ValueError, match="expected a int"):
        load_config(CONFIG, ["--config.train.steps=three"])
