"""Converters -> ArrayRecord -> grain, on tiny fixtures written in each source's own format, and
every kind of bad input in both error modes (fail raises naming file/record/field; skip counts
by reason and quarantines). Fixtures are generated here (PIL images, JSON, JSONL, parquet)."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import sys

import grain
import pytest
from PIL import Image

from data_pipeline.build import EmptyDatasetError, build_dataset, open_source
from data_pipeline.converters import CONVERTERS, get_converter
from data_pipeline.image_validation import ImagePolicy, resolve_under_root
from data_pipeline.schema import Category, ImageRef, Label, Sample, SampleError, Task

H, U, N = Label.HARMFUL, Label.UNHARMFUL, Label.NONE


def _image_bytes(fmt="PNG", size=(8, 8), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def _write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")


def _jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _parquet(path, columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


# ---- one fixture per converter: (source path, converter options, expected samples) ----------

INSTR = "You are a classifier for analyzing interactions between humans and AI."


def fx_guardreasoner_vl_sft(root):
    _write(root / "image/a.png", _image_bytes())
    a0 = "<think>A photo.</think><result>Request: unharmful\nResponse: None</result>"
    a1 = ("<think>Lock picking.</think><result>Answers:\nRequest: harmful\n"
          "Response: unharmful</result>")
    records = [
        {"messages": [{"role": "system", "content": INSTR},
                      {"role": "user", "content": "Human user:\n<image>What is shown?\n\n"
                                                  "AI assistant:\nNone\n\n"},
                      {"role": "assistant", "content": a0}],
         "images": ["./image/a.png"]},
        # instruction in front of the transcript (HarmImageTest layout), ShareGPT keys, no image
        {"messages": [{"from": "human", "value": f"{INSTR}\n\nHuman user:\nHow do I pick a "
                                                 "lock?\n\nAI assistant:\nI can't help.\n\n"},
                      {"from": "gpt", "value": a1}]},
    ]
    _write(root / "sft.json", json.dumps(records))
    return root / "sft.json", {}, [
        Sample("sft-0", "guardreasoner_vl_sft", Task.PROMPT_HARMFULNESS, "What is shown?",
               (ImageRef(path="image/a.png"),), None, U, N, target=a0,
               extras={"instruction": INSTR}),
        Sample("sft-1", "guardreasoner_vl_sft", Task.RESPONSE_HARMFULNESS,
               "How do I pick a lock?", (), "I can't help.", H, U, target=a1,
               extras={"instruction": INSTR}),
    ]


def fx_guardreasoner_vl_rl(root):
    img, blank = _image_bytes(), _image_bytes(size=(1, 1), color=(255, 255, 255))
    a0 = "<think>x</think><result>Request: unharmful\nResponse: unharmful</result>"
    _parquet(root / "rl.parquet", {
        "images": [[{"bytes": img, "path": "a.png"}], [{"bytes": blank, "path": None}]],
        "problem": ["Human user:\n<image>Describe it.\n\nAI assistant:\nSure.\n\n",
                    "Human user:\n<image>Tell me a joke\n\nAI assistant:\nNone\n\n"],
        "answer": [a0, "<think>y</think><result>Request: harmful\nResponse: None</result>"],
        "prompt_gt": ["unharmful", "harmful"],
        "response_gt": ["unharmful", "None"],
    })
    return root / "rl.parquet", {}, [
        Sample("rl-0", "guardreasoner_vl_rl", Task.RESPONSE_HARMFULNESS, "Describe it.",
               (ImageRef(data=img),), "Sure.", U, U, target=a0),
        Sample("rl-1", "guardreasoner_vl_rl", Task.PROMPT_HARMFULNESS, "Tell me a joke",
               (ImageRef(data=blank),), None, H, N,
               target="<think>y</think><result>Request: harmful\nResponse: None</result>",
               extras={"blank_image": True}),
    ]


def fx_guardreasoner_text(root):
    bench = root / "benchmark"
    out = "Answers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful"
    _write(bench / "ToxicChat.json", json.dumps([{
        "instruction": INSTR, "input": "Human user:\nhello there\n\nAI assistant:\nNone\n\n",
        "output": "unharmful"}]))
    _write(bench / "BeaverTails.json", json.dumps([{
        "instruction": INSTR,
        "input": "Human user:\nhow to steal a car\n\nAI assistant:\nHere is how...\n\n",
        "output": out}]))
    return bench, {}, [  # a folder: every file, in sorted order
        Sample("BeaverTails-0", "guardreasoner_text", Task.RESPONSE_HARMFULNESS,
               "how to steal a car", (), "Here is how...", H, H, target=out,
               extras={"benchmark": "BeaverTails", "instruction": INSTR,
                       "completion": "compliance"}),
        Sample("ToxicChat-0", "guardreasoner_text", Task.PROMPT_HARMFULNESS, "hello there", (),
               None, U, N, extras={"benchmark": "ToxicChat", "instruction": INSTR}),
    ]


def fx_proguard(root):
    _write(root / "img/b.jpg", _image_bytes("JPEG"))
    syn = ["toxic agents", "chemical weapons", "bioweapons", "radiological", "nerve agents"]
    records = [
        {"prompt": [{"role": "system", "content": "SYS"},
                    {"role": "user", "content": "<BEGIN CONVERSATION>\nUser: how to make "
                     "sarin\nAgent: I cannot help.\n<END CONVERSATION>"}],
         "extra_info": {"index": 7, "query_label": "unsafe", "response_label": "safe",
                        "category": "C8S2", "modality": "text", "synonymous_phrase": syn,
                        "original_category": "Biological, Chemical and Radioactive Materials"}},
        {"id": "img-1", "images": ["img/b.jpg"], "query": "", "query_label": "safe",
         "response_label": "safe", "category": "", "original_category": "",
         "modality": "image", "synonymous_phrase": []},
    ]
    _write(root / "pg.jsonl", _jsonl(records))
    return root / "pg.jsonl", {}, [
        Sample("7", "proguard", Task.RESPONSE_HARMFULNESS, "how to make sarin", (),
               "I cannot help.", H, U,
               Category("C8S2", "Biological, Chemical and Radioactive Materials", tuple(syn)),
               extras={"modality": "text", "system": "SYS"}),
        Sample("img-1", "proguard", Task.IMAGE_SAFETY, "", (ImageRef(path="img/b.jpg"),), None,
               U, U, Category("", "", ()), extras={"modality": "image"}),
    ]


def fx_llavaguard(root):
    _write(root / "imgs/c.png", _image_bytes())
    policy = ("O1: Hate, Humiliation, Harassment: \nShould not: demean people.\n"
              "O2: Violence, Harm, or Cruelty: \nShould not: depict violence.")
    prompt = (f"Provide a safety assessment for the content provided by the user.\n{policy}\n"
              "Assessment Steps:\n1. Select a safety rating.")
    answer = json.dumps({"rating": "Unsafe", "category": "O2: Violence, Harm, or Cruelty",
                         "rationale": "The image shows a fight."})
    records = [
        {"id": "lg-0", "image": "imgs/c.png", "final-assessment": "Review Needed",
         "score": "Highly Inappropriate", "category": "O2: Violence, Harm, or Cruelty",
         "conversations": [{"from": "human", "value": f"<image>\n{prompt}"},
                           {"from": "gpt", "value": answer}]},
        # no assessment turn: the label comes from the score
        {"id": "lg-1", "image": "imgs/c.png", "score": "Generally Acceptable",
         "category": "NA: None applying",
         "conversations": [{"from": "human", "value": "<image> Is this fine under the policy?"}]},
    ]
    _write(root / "llava.json", json.dumps(records))
    return root / "llava.json", {}, [
        Sample("lg-0", "llavaguard", Task.POLICY_COMPLIANCE, prompt, (ImageRef(path="imgs/c.png"),),
               prompt_label=H, category=Category("O2", "Violence, Harm, or Cruelty"),
               policy=policy, target=answer,
               extras={"score": "Highly Inappropriate", "final_assessment": "Review Needed",
                       "rationale": "The image shows a fight."}),
        Sample("lg-1", "llavaguard", Task.POLICY_COMPLIANCE, "Is this fine under the policy?",
               (ImageRef(path="imgs/c.png"),), prompt_label=U,
               category=Category("NA", "None applying"),
               policy="Is this fine under the policy?", extras={"score": "Generally Acceptable"}),
    ]


def fx_safeeditbench(root):
    _write(root / "edit/d.png", _image_bytes())
    _write(root / "edit/d_safe.png", _image_bytes(color=(0, 90, 200)))
    _write(root / "seb.jsonl", _jsonl([
        {"image_path": "edit/d.png", "safety_label": "unsafe", "policy": "No violence.",
         "policy_level": "L3"},
        {"image_path": "edit/d_safe.png", "safety_label": 0, "policy": "No violence.",
         "policy_level": "L3"}]))
    return root / "seb.jsonl", {}, [
        Sample("seb-L1", "safeeditbench", Task.POLICY_COMPLIANCE, "",
               (ImageRef(path="edit/d.png"),), prompt_label=H, policy="No violence.",
               extras={"policy_level": "L3"}),
        Sample("seb-L2", "safeeditbench", Task.POLICY_COMPLIANCE, "",
               (ImageRef(path="edit/d_safe.png"),), prompt_label=U, policy="No violence.",
               extras={"policy_level": "L3"}),
    ]


def fx_unsafebench(root):
    a, b = _image_bytes(), _image_bytes("JPEG", color=(10, 200, 10))
    _parquet(root / "ub.parquet", {
        "image": [{"bytes": a, "path": "1.png"}, {"bytes": b, "path": "2.jpg"}],
        "safety_label": ["Unsafe", "Safe"], "category": ["Hate", "Spam"],
        "source": ["Laion5B", "Lexica"]})
    return root / "ub.parquet", {}, [
        Sample("ub-0", "unsafebench", Task.IMAGE_SAFETY, "", (ImageRef(data=a),),
               prompt_label=H, category=Category("", "Hate"), extras={"origin": "Laion5B"}),
        Sample("ub-1", "unsafebench", Task.IMAGE_SAFETY, "", (ImageRef(data=b),),
               prompt_label=U, category=Category("", "Spam"), extras={"origin": "Lexica"}),
    ]


def fx_generic_jsonl(root):
    _write(root / "p/e.png", _image_bytes())
    _write(root / "g.jsonl", _jsonl([
        {"uid": 11, "question": "<image>Is this fine?", "verdict": "ok", "pics": ["p/e.png"]},
        {"uid": 12, "question": "How to rob a bank", "verdict": "bad"}]))
    options = {"user_text_field": "question", "prompt_label_field": "verdict",
               "images_field": "pics", "id_field": "uid",
               "label_words": {"bad": "harmful", "ok": "unharmful"}}
    return root / "g.jsonl", options, [
        Sample("11", "generic_jsonl", Task.PROMPT_HARMFULNESS, "Is this fine?",
               (ImageRef(path="p/e.png"),), prompt_label=U),
        Sample("12", "generic_jsonl", Task.PROMPT_HARMFULNESS, "How to rob a bank",
               prompt_label=H),
    ]


def fx_sharegpt(root):
    _write(root / "s/f.png", _image_bytes())
    _write(root / "chat.jsonl", _jsonl([
        {"conversations": [{"from": "system", "value": "Be brief."},
                           {"from": "human", "value": "<image>Describe the image."},
                           {"from": "gpt", "value": "A red square."}], "images": ["s/f.png"]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Tell me a joke"},
                      {"role": "assistant", "content": "No."}]}]))
    return root / "chat.jsonl", {}, [
        Sample("chat-L1", "sharegpt", Task.CAPTIONING, "Describe the image.",
               (ImageRef(path="s/f.png"),), target="A red square.",
               extras={"system": "Be brief."}),
        Sample("chat-L2", "sharegpt", Task.CAPTIONING, "Tell me a joke", target="No.",
               extras={"history": [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello!"}]}),
    ]


FIXTURES = {name[3:]: fn for name, fn in globals().items() if name.startswith("fx_")}


def test_every_converter_has_a_fixture():
    assert set(FIXTURES) == set(CONVERTERS)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_converter_and_arrayrecord_roundtrip(name, tmp_path):
    source, options, expected = FIXTURES[name](tmp_path / "data")
    got = list(get_converter(name)(source, root=tmp_path / "data", **options))
    assert got == expected

    out = tmp_path / "out"
    summary = build_dataset(name, source, out, root=tmp_path / "data", options=options,
                            progress=False, echo=False)
    assert (summary.read, summary.written, summary.skipped) == (2, 2, {})
    assert json.loads((out / "summary.json").read_text())["written"] == 2
    assert not (out / "quarantine.jsonl").exists()

    source_ = open_source(out, "train")
    assert source_.image_root == str((tmp_path / "data").absolute())
    ds = grain.MapDataset.source(source_)
    assert [ds[i] for i in range(len(ds))] == expected  # same samples, same order
    assert pickle.loads(pickle.dumps(source_))[1] == expected[1]  # grain workers get a copy
    assert "tensorflow" not in sys.modules


def test_embedded_images_roundtrip(tmp_path):
    source, _, expected = fx_safeeditbench(tmp_path / "data")
    build_dataset("safeeditbench", source, tmp_path / "out", embed_images=True, progress=False,
                  echo=False)
    got = list(grain.MapDataset.source(open_source(tmp_path / "out")))
    assert [s.images[0].data for s in got] == [
        (tmp_path / "data" / s.images[0].path).read_bytes() for s in expected]
    assert [s.prompt_label for s in got] == [H, U]


# ---- bad input ----------------------------------------------------------------------------------

GOOD = {"image_path": "edit/good.png", "safety_label": "safe", "policy": "No gore.",
        "policy_level": "L2"}


def _bad_case(case: str, root, tmp_path):
    """Writes seb.jsonl under root: line 1 good, line 2 bad. -> (reason, field, build kwargs)."""
    _write(root / "edit/good.png", _image_bytes())
    outside = tmp_path / "outside.png"
    _write(outside, _image_bytes())
    bad, kwargs, raw_line = dict(GOOD), {}, None
    field = "image_path"
    if case == "truncated_image":
        png = _image_bytes(size=(32, 32))
        _write(root / "edit/bad.png", png[: len(png) // 2])
        bad["image_path"], reason = "edit/bad.png", "truncated_image"
    elif case == "corrupt_image":
        _write(root / "edit/bad.png", b"this is not an image at all")
        bad["image_path"], reason = "edit/bad.png", "corrupt_image"
    elif case == "missing_file":
        bad["image_path"], reason = "edit/nowhere.png", "missing_image"
    elif case == "escape_dotdot":
        bad["image_path"], reason = "../outside.png", "path_escape"
    elif case == "escape_absolute":
        bad["image_path"], reason = str(outside), "path_escape"
    elif case == "escape_symlink":
        os.symlink(outside, root / "edit/link.png")
        bad["image_path"], reason = "edit/link.png", "path_escape"
    elif case == "unknown_label":
        bad["safety_label"], reason, field = "maybe", "unknown_label", "safety_label"
    elif case == "empty_text":
        bad["policy"], reason, field = "   ", "empty_text", "policy"
    elif case == "decompression_bomb":
        _write(root / "edit/big.png", _image_bytes(size=(64, 64)))  # 4096 px > cap; good is 64
        bad["image_path"], reason = "edit/big.png", "image_too_large"
        kwargs["max_image_pixels"] = 1000
    elif case == "non_utf8":
        raw_line = json.dumps(dict(GOOD, policy="No \x00gore.")).encode().replace(
            b"\\u0000", b"\xff\xfe")
        reason, field = "non_utf8", "policy"
    elif case == "invalid_json":
        raw_line, reason, field = b'{"image_path": "edit/good.png", "safety_label": ', \
            "invalid_json", None
    else:
        raise AssertionError(case)
    line2 = raw_line if raw_line is not None else json.dumps(bad).encode()
    _write(root / "seb.jsonl", json.dumps(GOOD).encode() + b"\n" + line2 + b"\n")
    return reason, field, kwargs


BAD_CASES = ["truncated_image", "corrupt_image", "missing_file", "escape_dotdot",
             "escape_absolute", "escape_symlink", "unknown_label", "empty_text",
             "decompression_bomb", "non_utf8", "invalid_json"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fail_names_file_record_field(case, tmp_path):
    root = tmp_path / "data"
    reason, field, kwargs = _bad_case(case, root, tmp_path)
    with pytest.raises(SampleError) as info:
        build_dataset("safeeditbench", root / "seb.jsonl", tmp_path / "out", on_error="fail",
                      progress=False, echo=False, **kwargs)
    err, msg = info.value, str(info.value)
    assert err.reason == reason, msg
    assert str(root / "seb.jsonl") in msg and "record line 2" in msg, msg
    if field:
        assert f"field {field!r}" in msg, msg
    assert not (tmp_path / "out" / "guard_samples" / "safeeditbench" / "1.0.0").exists()


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_skip_counts_and_quarantines(case, tmp_path):
    root = tmp_path / "data"
    reason, field, kwargs = _bad_case(case, root, tmp_path)
    out = tmp_path / "out"
    summary = build_dataset("safeeditbench", root / "seb.jsonl", out, on_error="skip",
                            progress=False, echo=False, **kwargs)
    assert (summary.read, summary.written, summary.skipped) == (2, 1, {reason: 1})
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["skipped"] == {reason: 1} and on_disk["skipped_total"] == 1
    lines = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    q = lines[0]
    assert (q["file"], q["record"], q["field"], q["reason"]) == (
        str(root / "seb.jsonl"), "line 2", field, reason)
    assert q["message"]
    assert [s.id for s in open_source(out)] == ["seb-L1"]


def test_bad_records_in_json_arrays_and_parquet(tmp_path):
    """Record numbers are indices for JSON arrays and parquet rows; fields are full paths."""
    root = tmp_path / "data"
    source, _, _ = fx_guardreasoner_vl_sft(root)
    raw = source.read_bytes().replace(b"What is shown?", b"What \xff shown?")
    source.write_bytes(raw)
    first, second = list(get_converter("guardreasoner_vl_sft")(source))
    assert isinstance(first, SampleError) and isinstance(second, Sample)
    assert first.reason == "non_utf8"
    assert "record 0" in str(first) and "field 'messages[1].content'" in str(first)

    _parquet(root / "ub.parquet", {
        "image": [{"bytes": _image_bytes(), "path": "1.png"}, {"bytes": b"junk", "path": "2.png"}],
        "safety_label": ["Unsafe", "Safe"], "category": ["Hate", "Spam"], "source": ["a", "b"]})
    summary = build_dataset("unsafebench", root / "ub.parquet", tmp_path / "out",
                            on_error="skip", progress=False, echo=False)
    assert summary.skipped == {"corrupt_image": 1}
    q = json.loads((tmp_path / "out" / "quarantine.jsonl").read_text())
    assert (q["record"], q["field"]) == (1, "image")


def test_source_specific_refusals(tmp_path):
    """Refusals particular to one source, checked on the converter stream (no build needed)."""
    def reasons(name, filename, records, **options):
        _write(tmp_path / filename, _jsonl(records))
        return [(x.reason, x.record, x.field) if isinstance(x, SampleError) else "ok"
                for x in get_converter(name)(tmp_path / filename, **options)]

    assert reasons("safeeditbench", "dup.jsonl", [
        dict(GOOD, id="a", image_path="g.png"), dict(GOOD, id="a", image_path="g.png")],
    ) == [("missing_image", "line 1", "image_path"), ("missing_image", "line 2", "image_path")]
    _write(tmp_path / "g.png", _image_bytes())
    assert reasons("safeeditbench", "dup.jsonl", [
        dict(GOOD, id="a", image_path="g.png"), dict(GOOD, id="a", image_path="g.png")],
    ) == ["ok", ("duplicate_id", "line 2", "id")]
    human = {"from": "human", "value": "<image> policy"}
    assert reasons("llavaguard", "lg.jsonl", [
        {"image": "g.png", "score": "Discard Sample", "conversations": [human]},
        {"image": "g.png", "score": "Highly Inappropriate", "category": "NA: None applying",
         "conversations": [human]},
        {"image": "g.png", "final-assessment": "Compliant", "conversations": [human]}],
    ) == [("discarded_sample", "line 1", "score"), ("inconsistent_label", "line 2", "category"),
          "ok"]
    assert reasons("proguard", "pg.jsonl", [
        {"query": "hi", "query_label": "safe", "modality": "audio"},
        {"query": "  ", "query_label": "safe", "modality": "text"}],
    ) == [("bad_value", "line 1", "modality"), ("empty_text", "line 2", "query")]
    assert reasons("sharegpt", "chat.jsonl", [
        {"messages": [{"role": "user", "content": "<image><image>x"},
                      {"role": "assistant", "content": "y"}], "images": ["g.png"]}],
    ) == [("bad_value", "line 1", "messages")]
    assert reasons("guardreasoner_text", "ToxicChat.jsonl", [
        {"input": "Human user:\nhi\n\nAI assistant:\nNone\n\n", "output": "toxic"}],
    ) == [("unknown_label", "line 1", "output")]


def test_everything_skipped_is_an_error_with_a_summary(tmp_path):
    root = tmp_path / "data"
    _write(root / "seb.jsonl", _jsonl([dict(GOOD, safety_label="maybe")]))
    with pytest.raises(EmptyDatasetError):
        build_dataset("safeeditbench", root / "seb.jsonl", tmp_path / "out", on_error="skip",
                      progress=False, echo=False)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"] == {
        "unknown_label": 1}


def test_path_rules(tmp_path):
    root = tmp_path / "root"
    _write(root / "a/b.png", _image_bytes())
    assert resolve_under_root(str(root / "a/b.png"), root)[1] == "a/b.png"  # absolute inside
    assert resolve_under_root("./a/../a/b.png", root)[1] == "a/b.png"
    policy = ImagePolicy(max_pixels=10)
    from data_pipeline.image_validation import ImageProblem, check_image_bytes
    with pytest.raises(ImageProblem) as info:
        check_image_bytes(_image_bytes(size=(4, 4)), policy)
    assert info.value.reason == "image_too_large"
    assert Image.MAX_IMAGE_PIXELS != 10  # the cap is not left behind in PIL


# ---- CLI ----------------------------------------------------------------------------------------

def _cli(argv):
    from guard_jax import data_cli
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    return data_cli.main(parser.parse_args(argv))


def test_cli_build_list_and_errors(tmp_path, capsys):
    assert _cli(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in CONVERTERS)

    root = tmp_path / "data"
    _bad_case("unknown_label", root, tmp_path)
    base = ["build", "safeeditbench", "--source", str(root / "seb.jsonl"), "--no-progress"]
    assert _cli(base + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown_label" in err and "record line 2" in err and "'safety_label'" in err

    assert _cli(base + ["--out", str(tmp_path / "b"), "--on-error", "skip", "--split", "test"]) == 0
    assert "skipped 1" in capsys.readouterr().out
    assert len(open_source(tmp_path / "b", "test")) == 1
    # an earlier build is never replaced silently
    assert _cli(base + ["--out", str(tmp_path / "b"), "--on-error", "skip"]) == 2
    assert _cli(base + ["--out", str(tmp_path / "b"), "--on-error", "skip", "--overwrite"]) == 0
    assert _cli(base + ["--out", str(tmp_path / "c"), "--option", "nope=1"]) == 2
    assert _cli(["build", "no_such", "--source", "x", "--out", str(tmp_path / "d")]) == 2


# ---- videos -----------------------------------------------------------------------------------

def _video_root(root):
    from video_files import encode, random_frames
    _write(root / "clips/a.mp4", encode(random_frames(6, 32, 48)))
    _write(root / "clips/b.mp4", encode(random_frames(4, 28, 28, seed=1)))
    return root


def test_generic_jsonl_and_sharegpt_read_videos(tmp_path):
    from data_pipeline.schema import VideoRef
    root = _video_root(tmp_path / "data")
    _write(root / "g.jsonl", _jsonl([
        {"id": "v1", "prompt": "<video>Is this clip safe?", "label": "safe",
         "videos": ["clips/a.mp4"], "images": []},
        {"id": "v2", "prompt": "", "label": "unsafe", "videos": ["clips/a.mp4", "clips/b.mp4"]},
    ]))
    got = list(get_converter("generic_jsonl")(root / "g.jsonl", allow_empty_text=True))
    assert [s.videos for s in got] == [(VideoRef(path="clips/a.mp4"),),
                                       (VideoRef(path="clips/a.mp4"), VideoRef(path="clips/b.mp4"))]
    assert got[0].user_text == "Is this clip safe?" and got[1].user_text == ""
    _write(root / "s.json", json.dumps([
        {"messages": [{"role": "user", "content": "<video><image>What happens here?"},
                      {"role": "assistant", "content": "A ball rolls."}],
         "videos": ["clips/b.mp4"], "images": ["clips/p.png"]}]))
    _write(root / "clips/p.png", _image_bytes())
    (sample,) = list(get_converter("sharegpt")(root / "s.json"))
    assert sample.videos == (VideoRef(path="clips/b.mp4"),)
    assert sample.images == (ImageRef(path="clips/p.png"),)
    assert sample.user_text == "What happens here?"
    # the records keep their videos through a build (paths, or bytes with --embed-images)
    for embed in (False, True):
        out = tmp_path / f"out{embed}"
        build_dataset("generic_jsonl", root / "g.jsonl", out, progress=False, echo=False,
                      embed_images=embed, options={"allow_empty_text": True})
        back = list(open_source(out))
        want = (root / "clips/a.mp4").read_bytes()
        assert back[0].videos == ((VideoRef(data=want),) if embed else got[0].videos)


def test_video_count_must_match_video_tokens(tmp_path):
    root = _video_root(tmp_path / "data")
    _write(root / "s.json", json.dumps([
        {"messages": [{"role": "user", "content": "<video><video>Compare."},
                      {"role": "assistant", "content": "Same."}], "videos": ["clips/a.mp4"]}]))
    (err,) = list(get_converter("sharegpt")(root / "s.json"))
    assert isinstance(err, SampleError) and err.reason == "bad_value"
    assert "2 <video> token(s) but 1 video(s)" in str(err)


def _bad_video_case(case, root):
    from video_files import audio_only, encode, random_frames
    good = encode(random_frames(6, 32, 48))
    files = {"unreadable_video": b"not a video" * 20, "empty_video": audio_only(),
             "truncated": good[:len(good) // 2]}
    if case in files:
        _write(root / "clips/bad.mp4", files[case])
        path = "clips/bad.mp4"
    elif case == "missing_video":
        path = "clips/none.mp4"
    else:  # path_escape
        path = "../outside.mp4"
    _write(root / "clips/ok.mp4", good)
    _write(root / "g.jsonl", _jsonl([{"prompt": "ok", "label": "safe", "videos": ["clips/ok.mp4"]},
                                     {"prompt": "bad", "label": "safe", "videos": [path]}]))
    return {"truncated": "unreadable_video"}.get(case, case)


VIDEO_CASES = ["unreadable_video", "empty_video", "truncated", "missing_video", "path_escape"]


@pytest.mark.parametrize("case", VIDEO_CASES)
def test_bad_videos_fail_or_are_quarantined(case, tmp_path):
    root = tmp_path / "data"
    reason = _bad_video_case(case, root)
    with pytest.raises(SampleError) as e:
        build_dataset("generic_jsonl", root / "g.jsonl", tmp_path / "fail", progress=False,
                      echo=False)
    assert (e.value.reason, e.value.record, e.value.field) == (reason, "line 2", "videos[0]")
    assert str(e.value).startswith(f"file {root / 'g.jsonl'}, record line 2, field 'videos[0]'")
    out = tmp_path / "out"
    summary = build_dataset("generic_jsonl", root / "g.jsonl", out, on_error="skip",
                            progress=False, echo=False)
    assert (summary.read, summary.written, summary.skipped) == (2, 1, {reason: 1})
    (q,) = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert (q["record"], q["field"], q["reason"]) == ("line 2", "videos[0]", reason)
    assert [s.user_text for s in open_source(out)] == ["ok"]
