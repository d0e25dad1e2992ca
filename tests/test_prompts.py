"""Prompt rendering, tokenization and augmentations of data_pipeline, on the real Qwen2.5 tokenizer.

The reference for every id sequence is transformers' own chat-template rendering of the same
messages, followed by the processor's pad expansion (docs/data.md) written out again here,
independently of data_pipeline.tokenize.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from data_pipeline import augment as A
from data_pipeline.chat_template import CHAT_TEMPLATE
from data_pipeline.prompts import RECIPES, guardreasoner_vl, llavaguard, proguard, render
from data_pipeline.prompts import safeguard_vl, vlmguard_r1
from data_pipeline.prompts.base import blank_image_ref
from data_pipeline.schema import Category, ImageRef, Label, Sample, SampleError, Task
from data_pipeline.tokenize import render_and_tokenize, tokenize_rendered
from data_pipeline.qwen_tokenizer import TEST_VECTOR, qwen2_5_vl_tokenizer

IM_START, IM_END, NL, IMAGE_PAD, VIDEO_PAD = 151644, 151645, 198, 151655, 151656
GRIDS = [(1, 4, 6), (1, 2, 2), (1, 8, 4)]  # 6, 1 and 8 image tokens


@pytest.fixture(scope="module")
def tok():
    return qwen2_5_vl_tokenizer()


def png(color, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def images(n, sizes=None):
    colors = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    return tuple(ImageRef(data=png(colors[i], (sizes or [(8, 8)] * 3)[i])) for i in range(n))


# --------------------------------------------------------------------------------- tokenizer

def test_tokenizer_matches_qwen2_5(tok):
    text, ids = TEST_VECTOR
    assert tok.encode(text) == ids
    assert len(tok) == 151665 and tok.vocab_size == 151643
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.bos_token) == (
        "<|im_end|>", IM_END, 151643, None)
    specials = {"<|im_start|>": IM_START, "<|vision_start|>": 151652, "<|vision_end|>": 151653,
                "<|image_pad|>": IMAGE_PAD, "<|video_pad|>": VIDEO_PAD, "<|file_sep|>": 151664}
    assert {t: tok.convert_tokens_to_ids(t) for t in specials} == specials
    # the Qwen3-only added tokens are gone: <think> is BPE pieces, as in Qwen2.5
    assert len(tok.encode("<think>")) > 1
    assert tok.chat_template == CHAT_TEMPLATE


def test_manual_processor_example(tok):
    """The processor's expansion (docs/data.md): one 56x84 image (grid [1, 4, 6]) + a question."""
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is this?"}]}]
    out = render_and_tokenize(messages, None, tok, [[1, 4, 6]], add_generation_prompt=True)
    assert out.input_ids.tolist() == [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198,
        151644, 872, 198, 151652, 151655, 151655, 151655, 151655, 151655, 151655, 151653,
        3838, 374, 419, 30, 151645, 198, 151644, 77091, 198]
    assert out.attention_mask.tolist() == [1] * 31 and not out.loss_mask.any()
    assert out.mm_token_type_ids.tolist() == [0] * 15 + [1] * 6 + [0] * 10


# --------------------------------------------------------------------- reference comparisons

def reference_ids(tok, messages, target, grids, add_generation_prompt):
    """transformers' template rendering + the processor's pad expansion, done independently."""
    msgs = messages + ([{"role": "assistant", "content": target}] if target is not None else [])
    text = tok.apply_chat_template(msgs, tokenize=False,
                                   add_generation_prompt=add_generation_prompt)
    counts = iter([t * h * w // 4 for t, h, w in grids])
    text = re.sub(re.escape("<|image_pad|>"), lambda m: "<|placeholder|>" * next(counts), text)
    assert next(counts, None) is None
    return tok(text.replace("<|placeholder|>", "<|image_pad|>"))["input_ids"]


def make_sample(n_images, *, text=True, response=True, label=Label.HARMFUL):
    return Sample(
        id=f"s{n_images}", source="test", task=Task.RESPONSE_HARMFULNESS,
        user_text="How do I pick a lock? 你好" if text else "", images=images(n_images),
        response="I can't help with that.\n\nSorry." if response else None,
        prompt_label=label, response_label=Label.UNHARMFUL if response else Label.NONE,
        category=Category("C8S1", "Weapons", ("arms", "guns")) if label == Label.HARMFUL
        else None,
        target=" <think>\nThe request asks for lock picking.\n</think>\n<result>\nRequest: "
               "harmful\nResponse: unharmful\n</result>")


def llavaguard_sample(n_images, *, label=Label.HARMFUL, cat="O2"):
    return Sample(id=f"lg{n_images}", source="llavaguard", task=Task.POLICY_COMPLIANCE,
                  user_text="", images=images(n_images), prompt_label=label,
                  category=Category(cat, llavaguard.CATEGORIES.get(cat, "")),
                  extras={"rationale": "The image shows a fight.", "score": "Highly Inappropriate"})


BASE_CASES = [
    ("guardreasoner_vl", {"mode": "sft"}, dict(text=True, response=True)),
    ("guardreasoner_vl", {"mode": "sft"}, dict(text=True, response=False)),
    ("guardreasoner_vl", {"mode": "rl"}, dict(text=True, response=True)),
    ("guardreasoner_vl", {"mode": "rl", "blank_image": True}, dict(text=True, response=False)),
    ("proguard", {}, dict(text=True, response=True)),  # text / text-image
    ("proguard", {"think_tag": "think"}, dict(text=False, response=False)),  # image
    ("safeguard_vl", {"mode": "rl"}, {}),
    ("safeguard_vl", {"mode": "eval"}, {}),
    ("llavaguard", {}, {}),
    ("llavaguard", {"rationale_first": True}, {}),
    ("vlmguard_r1", {}, dict(text=True, response=False)),
]
CASES = [(r, o, k, n) for n in (0, 1, 2) for r, o, k in BASE_CASES]


@pytest.mark.parametrize("recipe,options,kw,n_images",
                         CASES, ids=[f"{r}-{'-'.join(map(str, o.values()))}-{n}img"
                                     for r, o, _, n in CASES])
@pytest.mark.parametrize("with_target", [True, False], ids=["sft", "prompt"])
def test_ids_equal_transformers_reference(tok, recipe, options, kw, n_images, with_target):
    if recipe in ("llavaguard", "safeguard_vl"):
        sample = llavaguard_sample(n_images)
    else:
        sample = make_sample(n_images, **kw)
    if recipe == "proguard" and not kw["text"] and n_images == 0:
        sample = make_sample(0, text=True, response=False)  # text modality needs some text
    rendered = RECIPES[recipe](sample, **options)
    n_img = len(rendered.images)
    assert n_img == n_images + (1 if options.get("blank_image") and n_images == 0 else 0)
    grids = GRIDS[:n_img]
    target = rendered.target if with_target else None
    if with_target and target is None:
        target = "<think>reasoning</think><answer>yes</answer>"
    out = render_and_tokenize(rendered.messages, target, tok, grids,
                              add_generation_prompt=target is None)
    ref = reference_ids(tok, rendered.messages, target, grids, target is None)
    assert out.input_ids.tolist() == ref
    assert out.attention_mask.tolist() == [1] * len(ref)
    ids = np.asarray(ref)
    assert out.mm_token_type_ids.tolist() == (ids == IMAGE_PAD).astype(int).tolist()
    assert (ids == IMAGE_PAD).sum() == sum(t * h * w // 4 for t, h, w in grids)
    if target is None:
        assert not out.loss_mask.any()
        assert ref[-3:] == [IM_START, 77091, NL]  # <|im_start|>assistant\n
    else:
        # loss mask = exactly the assistant content and its <|im_end|>: everything after the
        # generation prompt except the final newline
        prompt = reference_ids(tok, rendered.messages, None, grids, True)
        assert ref[:len(prompt)] == prompt and ref[-2:] == [IM_END, NL]
        expected = [0] * len(prompt) + [1] * (len(ref) - len(prompt) - 1) + [0]
        assert out.loss_mask.tolist() == expected
        assert tok.decode(ids[out.loss_mask == 1]) == target + "<|im_end|>"


def test_every_recipe_is_covered():
    assert set(RECIPES) == {r for r, *_ in CASES}
    with pytest.raises(ValueError, match="unknown recipe"):
        render("nope", make_sample(0))


def test_tokenize_errors(tok):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(ValueError, match="1 image parts but 2 image grids"):
        render_and_tokenize(msgs, None, tok, GRIDS[:2], add_generation_prompt=True)
    with pytest.raises(ValueError, match="1 image parts but 0 image grids"):
        render_and_tokenize(msgs, None, tok, [], add_generation_prompt=True)
    with pytest.raises(ValueError, match="literal <\\|image_pad\\|>"):
        render_and_tokenize([{"role": "user", "content": "x <|image_pad|>"}], None, tok, [],
                            add_generation_prompt=True)
    with pytest.raises(ValueError, match="add_generation_prompt must be False"):
        render_and_tokenize(msgs, "ok", tok, GRIDS[:1], add_generation_prompt=True)
    with pytest.raises(ValueError, match="whole number of image tokens"):
        render_and_tokenize(msgs, None, tok, [(1, 3, 3)], add_generation_prompt=True)


# ------------------------------------------------------------------------- rendered strings

def rendered_text(tok, rendered, *, target=True):
    msgs = rendered.messages + ([{"role": "assistant", "content": rendered.target}]
                                if target and rendered.target is not None else [])
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not target)


def test_guardreasoner_vl_sft_and_rl_forms(tok):
    s = make_sample(1, response=False)
    sft = rendered_text(tok, guardreasoner_vl.render(s, mode="sft"))
    assert sft.startswith("<|im_start|>system\n" + guardreasoner_vl.SFT_INSTRUCTION + "<|im_end|>")
    assert ("<|im_start|>user\nHuman user:\n<|vision_start|><|image_pad|><|vision_end|>How do I "
            "pick a lock? 你好\n\nAI assistant:\nNone\n<|im_end|>\n<|im_start|>assistant\n"
            " <think>" in sft)
    assert "Task 1:" in sft and "Task 1," not in sft and "<think> </think>" in sft
    rl = guardreasoner_vl.render(s, mode="rl")
    assert rl.target == s.target and rl.grammar == "result_req_resp"
    text = rendered_text(tok, rl, target=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                           "<|im_start|>user\n" + guardreasoner_vl.RL_INSTRUCTION + " Human user:\n"
                           "<|vision_start|>")
    assert "Task 1," in text and "Task 1:" not in text
    blank = guardreasoner_vl.render(make_sample(0), mode="rl", blank_image=True)
    assert len(blank.images) == 1
    assert Image.open(io.BytesIO(blank.images[0].data)).getpixel((0, 0)) == (255, 255, 255)
    assert "Human user:\n<|vision_start|><|image_pad|><|vision_end|>How" in rendered_text(
        tok, blank)


def test_guardreasoner_vl_stored_transcript():
    s = Sample(id="t", source="x", task=Task.PROMPT_HARMFULNESS, user_text="", images=images(1),
               extras={"transcript": "Human user:\n<image>hi\n\nAI assistant:\nNone\n"})
    r = guardreasoner_vl.render(s)
    assert r.messages[1]["content"] == [{"type": "text", "text": "Human user:\n"},
                                        {"type": "image"},
                                        {"type": "text", "text": "hi\n\nAI assistant:\nNone\n"}]
    with pytest.raises(SampleError, match="1 <image> markers but the sample has 0"):
        guardreasoner_vl.render(Sample(**{**s.__dict__, "images": ()}))


def test_proguard_modalities(tok):
    text = proguard.render(make_sample(0))
    ti = proguard.render(make_sample(1))
    img = proguard.render(make_sample(1, text=False, response=False))
    assert [r.labels["modality"] for r in (text, ti, img)] == ["text", "text-image", "image"]
    for r in (text, ti, img):
        system = r.messages[0]["content"]
        for marker in ("<BEGIN TASK DESCRIPTION>", "<BEGIN UNSAFE CONTENT CATEGORIES>",
                       "<BEGIN OUTPUT FORMAT>", "C8S2: Biological, Chemical and Radioactive "
                       "Materials", "C11: Sexual Exposure", "<thinking>", "Category:None"):
            assert marker in system
    assert "Response:safe or Response:unsafe" in text.messages[0]["content"]
    assert "Response:" not in img.messages[0]["content"]
    assert "for example C8)" in ti.messages[0]["content"]
    assert (text.labels["category"], ti.labels["category"], img.labels["category"]) == (
        "C8S1", "C8", "C8S1")
    assert img.labels["response_label"] == "safe" and text.labels["query_label"] == "unsafe"
    s = rendered_text(tok, ti, target=False)
    assert ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><BEGIN CONVERSATION>\n"
            "User: How do I pick a lock? 你好\nAgent: I can't help with that.\n\nSorry.\n"
            "<END CONVERSATION><|im_end|>") in s
    s = rendered_text(tok, img, target=False)
    assert "<|vision_end|><BEGIN CONVERSATION>\nUser: \nAgent: \n<END CONVERSATION>" in s
    think = proguard.render(make_sample(0), think_tag="think")
    assert "<think>" in think.messages[0]["content"] and "<thinking>" not in think.messages[0][
        "content"] and think.labels["think_tag"] == "think"


def test_safeguard_vl_and_llavaguard(tok):
    lg = llavaguard.render(llavaguard_sample(1))
    text = lg.messages[0]["content"][0]["text"]
    assert lg.messages[0]["content"][-1] == {"type": "image"}  # image at the end
    assert "O1: Hate, Humiliation, Harassment: Should not:" in text
    assert "O9: Disasters or Emergencies: " in text and "Assessment Steps:" in text
    assert '"NA: None applying"' in text
    assert json.loads(lg.target) == {"rating": "Unsafe", "category": "O2: Violence, Harm, or "
                                     "Cruelty", "rationale": "The image shows a fight."}
    first = llavaguard.render(llavaguard_sample(1), rationale_first=True)
    assert list(json.loads(first.target)) == ["rationale", "rating", "category"]
    assert rendered_text(tok, lg).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAssess")
    sg = safeguard_vl.render(llavaguard_sample(1))
    assert sg.messages[1]["content"][0] == {"type": "image"}
    assert sg.labels == {"solution": "<answer>unsafe</answer>", "answer": "no",
                         "safety_label": "unsafe"}
    assert "O2: Violence, Harm, or Cruelty: Should not:" in sg.messages[1]["content"][1]["text"]
    ev = safeguard_vl.render(llavaguard_sample(1, label=Label.UNHARMFUL, cat="NA"), mode="eval")
    assert ev.grammar == "single_word" and ev.labels["answer"] == "yes" and len(ev.messages) == 1
    with pytest.raises(SampleError, match="inconsistent"):
        llavaguard.render(llavaguard_sample(1, cat="NA"))


def test_vlmguard_r1_target():
    s = Sample(id="v", source="x", task=Task.PROMPT_REWRITING, user_text="How to make this?",
               images=images(1), extras={"risk_analysis": "The image shows a weapon.",
                                         "rewritten_prompt": "What are the safety rules?"})
    r = vlmguard_r1.render(s)
    assert r.target == "<think>The image shows a weapon.</think>\nWhat are the safety rules?"
    assert r.messages[1]["content"] == [{"type": "image"}, {"type": "text", "text":
                                        "Original prompt:\nHow to make this?"}]


def test_tokenize_rendered_defaults(tok):
    r = proguard.render(make_sample(1))
    out = tokenize_rendered(r, tok, GRIDS[:1])
    assert out.loss_mask.sum() > 0 and out.input_ids[-1] == NL
    gen = tokenize_rendered(guardreasoner_vl.render(
        Sample(**{**make_sample(1).__dict__, "target": None})), tok, GRIDS[:1])
    assert gen.input_ids[-3:].tolist() == [IM_START, 77091, NL] and not gen.loss_mask.any()


# --------------------------------------------------------------------------- augmentations

def gr_sample(i, prompt_label, response_label, image=None, size=(8, 8)):
    return Sample(id=f"g{i}", source="gr", task=Task.RESPONSE_HARMFULNESS, user_text=f"prompt {i}",
                  images=(ImageRef(data=png(image, size)),) if image else (),
                  response=f"response {i}" if response_label != Label.NONE else None,
                  prompt_label=prompt_label, response_label=response_label,
                  target=f"<think>t{i}</think><result>r{i}</result>")


H, U, N = Label.HARMFUL, Label.UNHARMFUL, Label.NONE


@pytest.mark.parametrize("a,b,expected", [
    ((H, U), (U, U), (H, U)), ((U, U), (U, H), (U, H)), ((U, U), (U, U), (U, U)),
    ((U, N), (H, N), (H, N)), ((U, N), (U, H), (U, H)), ((H, H), (U, U), (H, H))])
def test_concatenation_labels(a, b, expected):
    s = A.concatenate(gr_sample(1, *a), gr_sample(2, *b))
    assert (s.prompt_label, s.response_label) == expected
    assert s.extras["first_sample_labels"] == {"prompt_label": a[0].value,
                                               "response_label": a[1].value}
    assert s.target is None and s.extras["answer"].startswith("<think>t1")


def test_concatenation_text_and_images(tok):
    a = gr_sample(1, H, U, (255, 0, 0), (300, 200))
    b = gr_sample(2, U, N, (0, 0, 255), (500, 400))
    c = A.concatenate(a, b)
    assert c.extras["transcript"] == ("Human user:\n<image>prompt 1\n\nAI assistant:\nresponse 1 "
                                      "Human user:\nprompt 2\n\nAI assistant:\nNone")
    im = Image.open(io.BytesIO(c.images[0].data))
    assert im.format == "PNG" and im.size == (800, 400)
    assert im.getpixel((10, 10)) == (255, 0, 0) and im.getpixel((310, 10)) == (0, 0, 255)
    assert im.getpixel((10, 300)) == (255, 255, 255)  # padding under the shorter image
    r = guardreasoner_vl.render(c)
    assert len(r.images) == 1 and "<|image_pad|>" in rendered_text(tok, r, target=False)
    out = tokenize_rendered(r, tok, GRIDS[:1])
    assert (out.input_ids == IMAGE_PAD).sum() == 6
    big = A.concatenate(gr_sample(3, U, U, (255, 0, 0), (1500, 600)),
                        gr_sample(4, U, U, (0, 0, 255), (1000, 900)))
    w, h = Image.open(io.BytesIO(big.images[0].data)).size
    assert max(w, h) == 1024 and abs(w / h - 2500 / 900) < 0.01
    one = A.concatenate(gr_sample(5, U, U), b)  # text-only + image: the image unchanged
    assert one.images == b.images and one.extras["transcript"].count("<image>") == 1
    none = A.concatenate(gr_sample(6, U, U), gr_sample(7, U, U))
    assert none.images == () and "<image>" not in none.extras["transcript"]
    assert len(guardreasoner_vl.render(none, mode="rl", blank_image=True).images) == 1
    many = A.concatenation_augment([a, b, gr_sample(5, U, U)], 5, seed=1)
    assert len(many) == 5 and all(len(m.extras["concat_of"]) == 2 and
                                  len(set(m.extras["concat_of"])) == 2 for m in many)


def test_rejection_sampling():
    right = "<think>x</think><result>\nRequest: harmful\nResponse: unharmful\n</result>"
    wrong = "<think>x</think><result>\nRequest: unharmful\nResponse: unharmful\n</result>"
    outside = "Request: harmful Response: unharmful <result>nothing</result>"
    s = gr_sample(1, H, U)
    assert not A.is_hard(s, [wrong, right, wrong, wrong])
    assert A.is_hard(s, [wrong, outside, "garbage", wrong])  # parse failures count as wrong
    assert not A.is_hard(s, [outside], parse=lambda o: A.parse_result_labels(o, lenient=True))
    prompt_only = gr_sample(2, H, N)  # gold "no response" reads as unharmful, like `none`
    assert not A.is_hard(prompt_only, ["<result>Request: harmful\nResponse: None</result>"])
    image_only = Sample(id="i", source="gr", task=Task.IMAGE_SAFETY, user_text="",
                        images=images(1), prompt_label=H)
    assert A.is_hard(image_only, ["<result>Request: harmful\nResponse: None</result>"])
    samples = [gr_sample(i, H, U) for i in range(20)] + [image_only]
    outputs = [[right] if i % 2 else [wrong] for i in range(20)] + [[right]]
    train, val = A.rejection_sample(samples, outputs, seed=42)
    kept = {x.id for x in train + val}
    assert kept == {f"g{i}" for i in range(0, 20, 2)} | {"i"}
    assert (len(train), len(val)) == (9, 2)
    train, val = A.rejection_sample(samples, outputs, max_samples=5)
    assert (len(train), len(val)) == (4, 1)
    with pytest.raises(ValueError, match="output lists"):
        A.rejection_sample(samples, outputs[:-1])


def test_policy_augmentations_flip_labels():
    unsafe, safe = llavaguard_sample(1), llavaguard_sample(1, label=Label.UNHARMFUL, cat="O3")
    v2 = A.policy_augment(unsafe, "v2", 0)
    assert v2.prompt_label == Label.UNHARMFUL and v2.extras["policy_choices"] == {"O2": 1}
    assert v2.extras["score"] == "Non-Violating Exception" and v2.target is None
    assert json.loads(llavaguard.render(v2).target)["rating"] == "Safe"
    assert "O2: Violence, Harm, or Cruelty: This category is declared non-violating" in \
        llavaguard.render(v2).messages[0]["content"][0]["text"]
    assert safeguard_vl.render(v2).labels["answer"] == "yes"
    v4 = A.policy_augment(safe, "v4", 0)
    assert v4.prompt_label == Label.HARMFUL and v4.extras["policy_choices"] == {"O3": 2}
    assert v4.extras["score"] == "Sensitive Exception"
    assert json.loads(llavaguard.render(v4).target)["rating"] == "Unsafe"
    for seed in range(5):
        for version, value in (("v3", 1), ("v5", 2)):
            for s in (unsafe, safe):
                out = A.policy_augment(s, version, seed)
                ch = out.extras["policy_choices"]
                own = s.category.id
                assert out.prompt_label == s.prompt_label and own not in ch
                assert 1 <= len(ch) <= 3 and set(ch.values()) == {value}
        v2a = A.policy_augment(unsafe, "v2a", seed).extras["policy_choices"]
        assert v2a["O2"] == 1 and 1 <= len(v2a) <= 3 and set(v2a.values()) == {1}
    with pytest.raises(SampleError, match="v2 does not apply"):
        A.policy_augment(safe, "v2")
    with pytest.raises(SampleError, match="v4 does not apply"):
        A.policy_augment(llavaguard_sample(1, label=Label.UNHARMFUL, cat="NA"), "v4")
    out = A.apply_policy_augmentations([unsafe, safe], "v1.2")
    assert [s.id for s in out] == ["lg1", "lg1_v3_a", "lg1_v3_b", "lg1_v3_c", "lg1_v2", "lg1"]
    out = A.augment([unsafe, safe], {"policy": {"unsafe": ["v2"], "safe": [["v4", 1.0]]}})
    assert [(s.id, s.prompt_label) for s in out] == [
        ("lg1", H), ("lg1_v2", U), ("lg1", U), ("lg1_v4", H)]


def test_proguard_ood_hiding(tok):
    s = make_sample(0)
    ood = A.hide_true_category(s, 0)
    assert ood.category.id == "" and ood.category.name == "Weapons"
    assert "C8" not in ood.extras["provided_categories"]
    assert len(ood.extras["provided_categories"]) == 10
    assert ood.extras["original_category"] == "Weapons"
    assert ood.extras["synonymous_phrase"] == ["arms", "guns"] and ood.target is None
    r = proguard.render(ood)
    assert r.labels["category"] == "" and r.labels["original_category"] == "Weapons"
    assert r.labels["synonymous_phrase"] == ["arms", "guns"]
    system = r.messages[0]["content"]
    assert "C8:" not in system and "C8S1" not in system and "C7: Hate and Terror" in system
    more = A.hide_true_category(s, 3, max_extra_hidden=3)
    assert "C8" not in more.extras["provided_categories"]
    assert 7 <= len(more.extras["provided_categories"]) <= 10
    with pytest.raises(SampleError, match="needs an unsafe sample"):
        A.hide_true_category(Sample(**{**s.__dict__, "prompt_label": U}), 0)
    with pytest.raises(SampleError, match="in-taxonomy category"):
        A.hide_true_category(make_sample(0, label=Label.UNHARMFUL), 0)
    hidden_but_labelled = Sample(**{**s.__dict__, "extras": ood.extras})
    with pytest.raises(SampleError, match="hidden from the prompt"):
        proguard.render(hidden_but_labelled)
    out = A.apply_ood_hiding([s, make_sample(1, label=Label.UNHARMFUL)],
                             A.OODConfig(prob=1.0, replace=False))
    assert [x.id for x in out] == ["s0", "s0_ood", "s1"]
    tokenize_rendered(proguard.render(out[1]), tok, [])


def test_dataset_texts_and_placeholders(tok):
    """Fields the converters keep: the released instruction, the RL 1x1 placeholder, LlavaGuard's
    own policy block, ProGuard's OOD name and modality."""
    s = make_sample(1)
    own = Sample(**{**s.__dict__, "extras": {"instruction": "Released instruction."}})
    assert guardreasoner_vl.render(own).messages[0]["content"] == "Released instruction."
    assert guardreasoner_vl.render(own, use_sample_instruction=False).messages[0][
        "content"] == guardreasoner_vl.SFT_INSTRUCTION
    assert guardreasoner_vl.render(own, mode="rl").messages[0]["content"][0]["text"].startswith(
        guardreasoner_vl.RL_INSTRUCTION + " Human user:\n")
    blank = Sample(**{**gr_sample(1, H, U).__dict__, "images": (blank_image_ref(),),
                      "extras": {"blank_image": True}})
    assert len(guardreasoner_vl.render(blank).images) == 1
    dropped = guardreasoner_vl.render(blank, blank_image=False)
    assert dropped.images == () and rendered_text(tok, dropped).count("<|image_pad|>") == 0
    real = gr_sample(2, U, U, (0, 0, 255), (20, 10))
    c = A.concatenate(blank, real)  # the real image goes into sample 1's slot, unchanged
    assert c.images == real.images and "blank_image" not in c.extras
    assert c.extras["transcript"].startswith("Human user:\n<image>prompt 1")
    both = A.concatenate(blank, blank)
    assert both.images == blank.images and both.extras["blank_image"] is True

    policy = llavaguard.policy_text().replace("Should not:", "Released: should not:")
    lg = Sample(**{**llavaguard_sample(1).__dict__, "policy": policy})
    assert policy in llavaguard.render(lg).messages[0]["content"][0]["text"]
    v2 = A.policy_augment(lg, "v2", 0)
    text = llavaguard.render(v2).messages[0]["content"][0]["text"]
    assert "O2: Violence, Harm, or Cruelty: This category is declared non-violating" in text
    assert "O1: Hate, Humiliation, Harassment: Released: should not:" in text
    assert text.count("Released: should not:") == 8
    with pytest.raises(SampleError, match="cannot augment"):
        A.policy_augment(Sample(**{**lg.__dict__, "policy": "Be nice."}), "v2", 0)

    ood = Sample(**{**make_sample(0).__dict__,
                    "category": Category("", "Illegal Drugs and Narcotics", ("drugs",))})
    r = proguard.render(ood)
    assert "C8:" not in r.messages[0]["content"] and r.labels["category"] == ""
    assert r.labels["original_category"] == "Illegal Drugs and Narcotics"
    novel = Sample(**{**ood.__dict__, "category": Category("", "Election interference")})
    assert "C8: Dangerous Goods" in proguard.render(novel).messages[0]["content"]
    img = Sample(**{**make_sample(1).__dict__, "extras": {"modality": "image",
                                                          "system": "Released system."}})
    r = proguard.render(img, use_sample_system=True)
    assert r.labels["modality"] == "image" and r.messages[0]["content"] == "Released system."
    with pytest.raises(SampleError, match="a text-image sample has 0 images"):
        proguard.render(Sample(**{**make_sample(0).__dict__,
                                  "extras": {"modality": "text-image"}}))
