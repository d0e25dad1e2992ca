"""Data safety: tokenizers load from local folders only (no network), `data build` refuses at
build time what training would refuse mid-run, the loader counts per-sample text problems
instead of crashing, and `--overwrite` replaces an earlier build only once the new one is done."""

import json
import socket
from pathlib import Path

import pytest
from PIL import Image

from data_pipeline.build import build_dataset, open_source
from data_pipeline.loader import LoaderConfig, make_loader, quarantine_summary
from data_pipeline.local_files import NoLocalDirectory, load_tokenizer
from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir
from data_pipeline.schema import Label, Sample, Task

HUB_NAME = "Qwen/Qwen2.5-VL-3B-Instruct"
TARGET = "<think>t</think><result>Request: unharmful</result>"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return str(write_qwen2_5_vl_tokenizer_dir(tmp_path_factory.mktemp("tok") / "qwen"))


@pytest.fixture
def no_network(monkeypatch):
    """Any DNS lookup or connection fails the test at once (and online mode, so a hub lookup
    would really be tried)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _build(src, out, **kw):
    return build_dataset("generic_jsonl", src, out, options={"target_field": "target"},
                         progress=False, echo=False, **kw)


# ---- item 4: local-only tokenizers --------------------------------------------------------

def test_tokenizer_from_a_hub_name_fails_fast_without_network(no_network, tok_dir):
    with pytest.raises(NoLocalDirectory, match="no such local directory 'Qwen/Qwen2.5-VL"):
        load_tokenizer(HUB_NAME)
    cfg = LoaderConfig(recipe="guardreasoner_vl", buckets=(256,), batch_size=1)
    with pytest.raises(NoLocalDirectory, match=r"no such local directory.*data\.tokenizer_dir"):
        make_loader([], cfg, tokenizer_dir=HUB_NAME, tokenizer_key="data.tokenizer_dir")
    from guard_jax.evaluation.generation import load_tokenizer as eval_load
    with pytest.raises(NoLocalDirectory, match="no such local directory"):
        eval_load(HUB_NAME)
    assert len(load_tokenizer(tok_dir)) == 151665  # a local folder still loads


def test_cli_names_the_config_key_and_exits_2(no_network, tmp_path, capsys):
    from guard_jax import cli
    src = _jsonl(tmp_path / "a.jsonl", [{"id": "a", "prompt": "hi", "label": "safe",
                                         "target": TARGET}])
    code = cli.main(["data", "build", "generic_jsonl", "--source", str(src), "--out",
                     str(tmp_path / "out"), "--no-progress", "--option", "target_field=target",
                     "--check-config", str(CONFIGS / "tiny_sft.py"),
                     f"--config.data.tokenizer_dir={HUB_NAME}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no such local directory 'Qwen/Qwen2.5-VL-3B-Instruct'" in err
    assert "data.tokenizer_dir" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---- item 7: build refuses what the loader would refuse -----------------------------------

def _hostile(tmp_path):
    Image.new("RGB", (20000, 10), "red").save(tmp_path / "wide.png")
    Image.new("RGB", (40, 40), "red").save(tmp_path / "ok.png")
    return _jsonl(tmp_path / "src.jsonl", [
        {"id": "ok0", "prompt": "hello", "label": "safe", "images": ["ok.png"], "target": TARGET},
        {"id": "wide", "prompt": "hi", "label": "safe", "images": ["wide.png"], "target": TARGET},
        {"id": "big", "prompt": "hi", "label": "safe", "target": "y" * 1_000_000},
        {"id": "pad", "prompt": "see <|image_pad|> here", "label": "safe", "target": TARGET},
        {"id": "ok1", "prompt": "hello", "label": "safe", "target": TARGET},
    ])


def test_build_quarantines_records_training_would_refuse(tmp_path):
    s = _build(_hostile(tmp_path), tmp_path / "out", on_error="skip")
    assert (s.read, s.written) == (5, 2)
    assert s.skipped == {"bad_image_shape": 1, "image_token_in_text": 1, "text_too_long": 1}
    lines = [json.loads(x) for x in open(tmp_path / "out" / "quarantine.jsonl")]
    assert {(x["record"], x["field"]) for x in lines} == {
        ("wide", "images[0]"), ("big", "target"), ("pad", "user_text")}
    assert sorted(x.id for x in open_source(tmp_path / "out")) == ["ok0", "ok1"]


def test_build_check_config_applies_the_training_loader(tmp_path, tok_dir):
    src = _jsonl(tmp_path / "src.jsonl", [
        {"id": "short", "prompt": "hi", "label": "safe", "target": TARGET},
        {"id": "long", "prompt": "word " * 400, "label": "safe", "target": TARGET}])
    cfg = LoaderConfig(recipe="guardreasoner_vl", buckets=(256,), batch_size=1)
    s = _build(src, tmp_path / "out", on_error="skip", check_loader=cfg, tokenizer_dir=tok_dir)
    assert (s.written, s.skipped) == (1, {"too_long": 1})


def test_loader_counts_text_problems_instead_of_crashing(tmp_path, tok_dir):
    samples = [Sample(id=f"s{i}", source="t", task=Task.PROMPT_HARMFULNESS,
                      user_text="see <|image_pad|>" if i == 1 else f"q {i}",
                      prompt_label=Label.UNHARMFUL,
                      target="<|video_pad|>" if i == 2 else TARGET) for i in range(4)]
    q = str(tmp_path / "q.jsonl")
    cfg = LoaderConfig(recipe="guardreasoner_vl", buckets=(512,), batch_size=1, shuffle=False,
                       on_error="skip", quarantine_path=q)
    ids = [str(b["ids"][0]) for b in make_loader(samples, cfg, tokenizer_dir=tok_dir)]
    assert ids == ["s0", "s3"]
    assert quarantine_summary(q) == {"bad_text": 2}
    fields = {json.loads(x)["field"] for x in open(q + ".shard0")}
    assert fields == {"messages[1]", "target"}


def test_skip_mode_with_no_usable_record_stops_instead_of_spinning(tmp_path, tok_dir):
    """Every record refused, repeated forever: one clear error after a dataset's worth of
    refusals in a row, never an endless loader."""
    from data_pipeline.loader import NoUsableRecords
    samples = [Sample(id=f"s{i}", source="t", task=Task.PROMPT_HARMFULNESS,
                      user_text="see <|image_pad|>", prompt_label=Label.UNHARMFUL,
                      target=TARGET) for i in range(3)]
    q = str(tmp_path / "q.jsonl")
    cfg = LoaderConfig(recipe="guardreasoner_vl", buckets=(512,), batch_size=1,
                       on_error="skip", quarantine_path=q, num_epochs=None)
    with pytest.raises(NoUsableRecords, match="the last 4 samples in a row were refused"):
        next(make_loader(samples, cfg, tokenizer_dir=tok_dir))
    assert quarantine_summary(q)["bad_text"] >= 4  # (grain reads ahead of the filter)


@pytest.mark.parametrize("cap", [
    1000,  # 40x56 = 2240 pixels, above twice the cap: PIL raises DecompressionBombError
    pytest.param(1500, marks=pytest.mark.filterwarnings(  # above the cap: PIL's warning, made
        "error::PIL.Image.DecompressionBombWarning")),  # an error by a warnings filter
])
def test_loader_quarantines_a_decompression_bomb(tmp_path, tok_dir, monkeypatch, cap):
    """An image over PIL's pixel limit is a quarantined bad_image naming record and field;
    the warning made an error by a filter used to escape the loader as a traceback."""
    import io

    from data_pipeline.schema import ImageRef
    buf = io.BytesIO()
    Image.new("RGB", (56, 40), "red").save(buf, "PNG")
    samples = [Sample(id=f"s{i}", source="t", task=Task.PROMPT_HARMFULNESS, user_text="q",
                      images=(ImageRef(data=buf.getvalue()),) if i == 1 else (),
                      prompt_label=Label.UNHARMFUL, target=TARGET) for i in range(3)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", cap)
    q = str(tmp_path / "q.jsonl")
    cfg = LoaderConfig(recipe="guardreasoner_vl", buckets=(512,), batch_size=1, shuffle=False,
                       on_error="skip", quarantine_path=q)
    ids = [str(b["ids"][0]) for b in make_loader(samples, cfg, tokenizer_dir=tok_dir)]
    assert ids == ["s0", "s2"] and quarantine_summary(q) == {"bad_image": 1}
    (line,) = [json.loads(x) for x in open(q + ".shard0")]
    assert (line["record"], line["field"]) == ("s1", "images[0]")
    assert "image_too_large" in line["message"]


# ---- item 10: --overwrite swaps the finished build in --------------------------------------

def _leftovers(parent: Path):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".out."))


def test_failed_overwrite_keeps_the_earlier_build(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", [{"id": "a", "prompt": "hi", "label": "safe"}])
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": "b", "prompt": "hi", "label": "safe"},
                                          {"id": "c", "prompt": "hi", "label": "maybe"}])
    out = tmp_path / "out"
    _build(good, out)
    summary = (out / "summary.json").read_text()
    with pytest.raises(ValueError, match="unknown label word 'maybe'"):
        _build(bad, out, overwrite=True)  # fails on its 2nd record, after writing the 1st
    assert [x.id for x in open_source(out)] == ["a"]
    assert (out / "summary.json").read_text() == summary
    assert _leftovers(tmp_path) == []

    s = _build(bad, out, overwrite=True, on_error="skip")  # a complete build replaces it
    assert [x.id for x in open_source(out)] == ["b"] and s.skipped == {"unknown_label": 1}
    assert json.loads((out / "summary.json").read_text())["written"] == 1
    assert (out / "quarantine.jsonl").is_file()
    assert _leftovers(tmp_path) == []

    _build(good, out, overwrite=True)  # the earlier build's quarantine goes with it
    assert [x.id for x in open_source(out)] == ["a"]
    assert not (out / "quarantine.jsonl").exists()
