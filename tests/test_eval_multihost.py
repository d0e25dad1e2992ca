"""`guard-jax eval --config` on several processes (docs/evaluation.md#several-hosts): two
processes with 4 fake CPU devices each, joined on a localhost coordinator, against one process
with 8, through the real command line (tests/eval_multihost_worker.py). A tiny random model on a
text and an image benchmark (one image is corrupt and quarantined), from `--hf-dir` and from
`--checkpoint` (the `guard-jax import` of that HF directory): the same outputs, quarantine and
scores; process 1 writes nothing. Input errors, on every process or on one only, end every
process with the same line and exit 2."""

import json
import os

import numpy as np
import pytest

from guard_jax.training.hf_convert import import_hf
from processes import finish, ok, start
from test_eval_model import CONFIG, build_benchmarks
from tiny_qwen_dir import write_tiny_qwen_hf_dir

WORKER = os.path.join(os.path.dirname(__file__), "eval_multihost_worker.py")


def _data(root, *, corrupt: bool):
    """Both benchmarks under root/data; with `corrupt`, image 1 is not an image any more."""
    build_benchmarks(root / "raw", root / "data")
    if corrupt:  # after the build, which would refuse it: only the eval run meets it
        (root / "raw" / "im1.png").write_bytes(b"not a png")
    return root / "data"


def _jobs(root, out):
    hf, ck, config = str(root / "hf"), str(root / "ck"), str(root / "tiny_eval.py")
    bad, good = root / "bad" / "data", root / "good" / "data"

    def run(model, name, *extra, data=bad):
        return ["eval", "--config", config, *model, "--out", str(out / name), "--name", "tiny",
                f"--config.eval.data_root={data}", *extra]

    return [
        # an eval batch that data x fsdp (8 devices) does not divide
        {"name": "batch", "argv": run(["--hf-dir", hf], "batch", "--config.eval.batch_size=6")},
        # process 1 alone misses a dataset (its data root does not exist)
        {"name": "missing", "argv": run(["--hf-dir", hf], "missing", data=good),
         "argv_1": run(["--hf-dir", hf], "missing", data=root / "nowhere")},
        # process 1 alone meets a corrupt image mid-run (after ToxicChat's batch generated)
        {"name": "midrun", "argv": run(["--hf-dir", hf], "midrun", data=good),
         "argv_1": run(["--hf-dir", hf], "midrun", data=bad)},
        # the runs compared: the corrupt image is quarantined; process 1 is given another --out
        {"name": "hf", "argv": run(["--hf-dir", hf], "hf", "--config.eval.on_error=skip"),
         "argv_1": run(["--hf-dir", hf], "hf-p1", "--config.eval.on_error=skip")},
        {"name": "ck", "argv": run(["--checkpoint", ck], "ck", "--config.eval.on_error=skip"),
         "argv_1": run(["--checkpoint", ck], "ck-p1", "--config.eval.on_error=skip")},
    ]


def _run(jobs, processes):
    return start(WORKER, [json.dumps({"jobs": jobs})], processes=processes)


def _jobs_of(procs) -> list[dict]:
    return [r["jobs"] for r in ok(finish(procs, timeout=600))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every job on 2 processes x 4 devices and on 1 process x 8, at the same time."""
    root = tmp_path_factory.mktemp("eval_mh")
    write_tiny_qwen_hf_dir(root)
    import_hf(root / "hf", root / "ck")  # step 0: the HF directory's weights, float32
    _data(root / "good", corrupt=False)
    _data(root / "bad", corrupt=True)
    (root / "tiny_eval.py").write_text(CONFIG)
    two = _run(_jobs(root, root / "out" / "two"), 2)
    compared = ("batch", "hf", "ck")
    one = _run([j for j in _jobs(root, root / "out" / "one") if j["name"] in compared], 1)
    two, (one,) = _jobs_of(two), _jobs_of(one)
    print({name: [p[name]["seconds"] for p in two + [one] if name in p] for name in two[0]})
    return root, two, one


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".png"}


def test_two_processes_write_what_one_writes(runs):
    root, (p0, p1), one = runs
    for name in ("hf", "ck"):
        for got in (p0, p1, one):
            assert got[name]["rc"] == 0, got[name]["stderr"][-3000:]
        a, b = root / "out" / "one" / name, root / "out" / "two" / name
        files = _files(a)
        assert set(files) == {"quarantine.jsonl", "prompt/report.json", "prompt/report.md",
                              "prompt/outputs/ToxicChat.jsonl",
                              "prompt/outputs/HarmImageTest.jsonl"}
        assert _files(b) == files, name  # byte for byte: outputs, quarantine, scores
        assert {p.name for p in (b / "prompt").glob("*.png")} == {"confusion.png",
                                                                  "f1_bars.png"}
        assert not (root / "out" / "two" / f"{name}-p1").exists()  # process 1 wrote nothing
        (q,) = (json.loads(x) for x in files["quarantine.jsonl"].splitlines())
        assert (q["record"], q["field"], q["reason"]) == ("img1", "images[0]", "bad_image")
        report = json.loads(files["prompt/report.json"])
        assert [b["n_records"] for b in report["benchmarks"]] == [3, 2]
    # the checkpoint restored onto the mesh gives what its HF export gives
    ck, hf = root / "out" / "one", root / "out" / "one"
    for bench in ("ToxicChat", "HarmImageTest"):
        assert (ck / "ck" / "prompt" / "outputs" / f"{bench}.jsonl").read_bytes() == (
            hf / "hf" / "prompt" / "outputs" / f"{bench}.jsonl").read_bytes()


def test_input_errors_end_every_process_alike(runs):
    root, (p0, p1), one = runs
    for name, expect in (("batch", "eval.batch_size 6 is not a multiple of the 8"),
                         ("missing", "on process 1 of 2: 2 missing or unusable input(s): "
                                     "eval.benchmarks[0] (ToxicChat) path"),
                         ("midrun", "on process 1 of 2: ")):
        lines = []
        for p in (p0, p1):  # progress bars, then one line: the error, no traceback
            err = p[name]["stderr"]
            assert p[name]["rc"] == 2 and "Traceback" not in err, err[-3000:]
            lines.append([ln for ln in err.splitlines() if ln.startswith("guard-jax")])
        assert lines[0] == lines[1] and len(lines[0]) == 1, lines
        assert lines[0][0].startswith("guard-jax eval: ") and expect in lines[0][0], lines[0]
        assert not (root / "out" / "two" / name / "prompt" / "report.json").exists()
    # before the model loads nothing is written; mid-run what one process writes too: the
    # outputs of the benchmarks already run (here ToxicChat's), no report
    assert not (root / "out" / "two" / "batch").exists()
    assert not (root / "out" / "two" / "missing").exists()
    assert "images[0]" in p0["midrun"]["stderr"] and "img1" in p0["midrun"]["stderr"]
    assert one["batch"]["rc"] == 2
    assert one["batch"]["stderr"] == p0["batch"]["stderr"]


def test_lora_checkpoint_restores_as_its_export(tmp_path):
    """`--checkpoint` restores parameters and LoRA adapters onto the mesh and folds the
    adapters in: the same arrays, dtypes and shardings as its `guard-jax export` loaded with
    `--hf-dir`, in float32 and in bfloat16."""
    import jax
    from flax import nnx

    import guard_jax
    from guard_jax.evaluation import generation
    from guard_jax.run_config import base_config, validate
    from guard_jax.sharding import make_mesh
    from guard_jax.training.checkpoint import Checkpointer
    from guard_jax.training.hf_convert import export_checkpoint
    from guard_jax.training.optim import run_optimizer
    from guard_jax.training.train_step import init_train_state
    hf = write_tiny_qwen_hf_dir(tmp_path)
    run = base_config()
    run.model.param_dtype, run.model.hf_dir, run.lora.rank = "float32", str(hf), 2
    validate(run)
    base = guard_jax.load_hf(hf, dtype="float32", progress=False)
    tx, _, lora = run_optimizer(run, nnx.split(base, nnx.Param)[1])
    _, state = init_train_state(base, tx, lora=lora)
    state["lora"] = jax.tree.map(lambda x: x + 0.05, state["lora"])  # B = 0 would add nothing
    with Checkpointer(tmp_path / "ck", async_save=False, config=json.loads(run.to_json())) as ck:
        ck.save(3, state, wait=True)
    export_checkpoint(tmp_path / "ck", tmp_path / "export", progress=False)
    step, ck_run = generation.checkpoint_run(tmp_path / "ck")
    assert step == 3 and generation.checkpoint_tokenizer_dir(ck_run) == str(hf)
    flat = lambda m: dict(nnx.to_flat_state(nnx.state(m)))  # noqa: E731
    # on the eval configs' mesh (batch over every device) bit for bit; with the weights split
    # over fsdp, XLA sums the adapters' product in another order: float32 rounding apart
    for axes, dtype, tol in (((8, 1), "float32", 0), ((8, 1), "bfloat16", 0),
                             ((4, 2), "float32", 1e-7)):
        mesh = make_mesh({"data": axes[0], "fsdp": axes[1], "tensor": 1})
        ours = generation.load_checkpoint(tmp_path / "ck", step, ck_run, dtype=dtype,
                                          compute_dtype=dtype, mesh=mesh)
        ref = guard_jax.load_hf(tmp_path / "export", dtype=dtype, mesh=mesh, progress=False)
        assert ours.config == ref.config
        a, b, before = flat(ours), flat(ref), flat(base)
        assert a.keys() == b.keys()
        for k, v in a.items():
            x, y = v.get_value(), b[k].get_value()
            assert x.dtype == y.dtype == jax.numpy.dtype(dtype) and x.sharding == y.sharding, k
            np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                       rtol=tol * 10, atol=tol, err_msg=str(k))
        moved = [k for k in a if not np.array_equal(np.asarray(a[k].get_value()),
                                                    np.asarray(before[k].get_value()))]
        assert len(moved) >= 4  # the adapted projections (and, in bfloat16, every weight)
