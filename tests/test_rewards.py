"""Device rewards equal their plain-Python references on real Qwen2.5 tokenisations.

Every case is tokenised with the real tokenizer, often piecewise (so tags and labels split
across tokens in unusual places) and sometimes through single-byte tokens (so characters split
across tokens), then completed with EOS and padding, or truncated mid-tag. Each recipe's cases
run as one batch through one jit compile; every term and the total are compared with the
reference on the decoded string.
"""

from __future__ import annotations

import math
import random

import jax
import numpy as np
import pytest

from data_pipeline.qwen_tokenizer import qwen2_5_vl_tokenizer
from guard_jax.rewards import make_reward, reference, reward_config
from guard_jax.rewards import proguard as pg
from guard_jax.rewards import safeguard_vl as sg
from guard_jax.rewards.alphabet import (
    Alphabet, decode_codes, ignorecase_variants, lower_preimage, utf8_decoder_table)
from guard_jax.rewards.automata import run_machine_host
from guard_jax.rewards.scan import host_scan
from guard_jax.rewards.tokens import byte_level_alphabet, host_decode, token_bytes

EOS, PAD = 151645, 151643
VOCAB = 151936


@pytest.fixture(scope="module")
def tok():
    return qwen2_5_vl_tokenizer()


@pytest.fixture(scope="module")
def table(tok):
    return token_bytes(tok, VOCAB)


@pytest.fixture(scope="module")
def byte_ids(tok):
    vocab = tok.get_vocab()
    return {b: vocab[c] for c, b in byte_level_alphabet().items()}


def encode(tok, byte_ids, text: str, rng: random.Random) -> list[int]:
    """Token ids decoding to `text`: whole, piecewise (random cut points), or with some
    characters spelled as single-byte tokens."""
    style = rng.random()
    if style < 0.4:
        ids = tok.encode(text)
    else:
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 6))))
        ids, last = [], 0
        for c in [*cuts, len(text)]:
            piece = text[last:c]
            if piece and style > 0.8 and rng.random() < 0.5:
                ids += [byte_ids[b] for b in piece.encode("utf-8")]
            elif piece:
                ids += tok.encode(piece)
            last = c
    assert tok.decode(ids) == text
    return ids


def batch(tok, byte_ids, texts, rng, *, truncate=0.15, exact=0):
    """ids / mask [B, T]: EOS after most completions, padding, some cut short (no EOS). The
    last `exact` texts are encoded whole, end with EOS and are never cut."""
    rows, masks = [], []
    for k, text in enumerate(texts):
        fixed = k >= len(texts) - exact
        ids = tok.encode(text) if fixed else encode(tok, byte_ids, text, rng)
        m = [True] * len(ids)
        r = 0.5 if fixed else rng.random()
        if r < truncate and ids:
            keep = rng.randint(0, len(ids))
            m = [i < keep for i in range(len(ids))]
        elif r < 0.9:
            ids, m = ids + [EOS], m + [True]
        if not fixed and rng.random() < 0.05 and ids:
            # an id past the tokenizer's and the table's vocabulary decodes to nothing
            i = rng.randrange(len(ids))
            ids, m = ids[:i] + [rng.choice([151700, 300000])] + ids[i:], m[:i] + [m[i]] + m[i:]
        rows.append(ids)
        masks.append(m)
    T = max(len(r) for r in rows) + 3
    ids = np.full((len(rows), T), PAD, np.int32)
    mask = np.zeros((len(rows), T), bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, :len(r)] = r
        mask[i, :len(m)] = m
    return ids, mask


def assert_terms_equal(device: dict, refs: list[dict], texts: list[str]):
    assert refs
    for key in refs[0]:
        got = np.asarray(device[key], np.float64)
        want = np.array([r[key] for r in refs])
        bad = ~np.isclose(got, want, rtol=2e-6, atol=1e-6)
        assert not bad.any(), [(key, texts[i], got[i], want[i]) for i in np.flatnonzero(bad)[:5]]


# ----------------------------------------------------------------------------- shared pieces

def test_token_table_decodes_like_the_tokenizer(tok, table):
    rng = np.random.default_rng(0)
    partial = [i for i in range(0, 151643, 7)
               if table.lengths[i] and not _valid_utf8(table.of([i]))]
    assert len(partial) > 100
    for _ in range(200):
        n = int(rng.integers(0, 25))
        ids = np.where(rng.random(n) < 0.5, rng.choice(partial, n), rng.integers(0, VOCAB, n))
        ids = np.where(rng.random(n) < 0.15, rng.integers(151643, 151665, n), ids)
        assert host_decode(tok, ids[None])[0] == table.of(ids).decode("utf-8", "replace")


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_utf8_decoder_matches_python_decode():
    alpha = Alphabet(set("<>/ks") | ignorecase_variants("k") | ignorecase_variants("s") | {"\n"})
    dec = utf8_decoder_table(alpha)
    rng = random.Random(0)
    for _ in range(3000):
        data = random_bytes(rng, alpha)
        want = [alpha.class_of(c) for c in data.decode("utf-8", "replace")]
        got = [c for code in decode_codes(dec, data) for c in alpha.expand(code)]
        assert got == want, data


def random_bytes(rng: random.Random, alpha: Alphabet) -> bytes:
    special = [c.encode() for c in alpha.special_non_ascii()] + ["\u3000\u2028é你𝕏".encode()]
    pool = [bytes([b]) for b in range(256)] + special + [
        s[:k] for s in special for k in range(1, len(s))]
    ascii_ = [c.encode() for c in alpha.names if ord(c) < 0x80]
    return b"".join(rng.choice(pool + ascii_ * 8) for _ in range(rng.randint(0, 40)))


@pytest.mark.parametrize("recipe", ["proguard", "safeguard_vl"])
def test_compound_steps_act_like_their_two_characters(recipe):
    """A byte that breaks a UTF-8 sequence emits "U+FFFD, then itself" in one step; machines
    (registers included) end where the decoded string's characters take them."""
    program = (pg if recipe == "proguard" else sg).build_program()
    rng = random.Random(1)
    prefix = "<thinking>x</thinking>\n<answer>\nRequest:unsafe\nCategory:" if \
        recipe == "proguard" else "<think>"
    for _ in range(400):
        data = prefix.encode() + random_bytes(rng, program.alphabet)
        codes = decode_codes(program.decoder, data)
        classes = [program.alphabet.class_of(c) for c in data.decode("utf-8", "replace")]
        for m in program.machines:
            assert run_machine_host(m, program.alphabet, codes) == \
                run_machine_host(m, program.alphabet, classes), data


def test_ignorecase_variants_follow_re():
    assert ignorecase_variants("s") == {"s", "S", "\u017f"}
    assert ignorecase_variants("k") == {"k", "K", "\u212a"}
    assert ignorecase_variants("i") == {"i", "I", "\u0130", "\u0131"}
    assert lower_preimage("y") == {"y", "Y"}


def test_registry_and_config_errors(tok, table):
    with pytest.raises(KeyError, match="registered"):
        reward_config("llamaguard")
    with pytest.raises(ValueError, match="unknown knobs.*'beta'"):
        reward_config("guardreasoner_vl", betta=2)
    with pytest.raises(ValueError, match="min_length must be > 0"):
        reward_config("guardreasoner_vl", min_length=0.0)
    with pytest.raises(ValueError, match="mode"):
        reward_config("guardreasoner_vl", mode="omni")
    with pytest.raises(ValueError, match="category_mode"):
        reward_config("proguard", category_mode="lenient")
    r = make_reward("guardreasoner_vl", table=table)
    with pytest.raises(ValueError, match=r"record 1, field 'response_label'"):
        r.encode_gold([{"request_label": "harmful", "response_label": "none"},
                       {"request_label": "harmful", "response_label": "Harmful"}])
    r = make_reward("proguard", table=table)
    with pytest.raises(ValueError, match=r"record 0, field 'category'.*'C12'"):
        r.encode_gold([{"query_label": "unsafe", "response_label": "safe",
                        "modality": "text", "category": "C12"}])
    with pytest.raises(ValueError, match=r"record 0, field 'solution'"):
        make_reward("safeguard_vl", table=table).encode_gold([{"answer": "safe"}])


# ----------------------------------------------------------------------------- GuardReasoner-VL

def guardreasoner_texts(rng: random.Random) -> list[str]:
    fixed = [
        "",
        "<think>fine</think><result>Request: harmful\nResponse: unharmful</result>",
        "<think>x</think>\n<result>\nAnswers: \nRequest: unharmful\nResponse: None\n</result>",
        "<think>x</think><result>Request: harmful\nResponse: harmful",           # no </result>
        "<think>x</think>Request: harmful\nResponse: harmful",                    # no block
        "<result>Request: unharmful</result><result>Request: harmful\nResponse: harmful</result>",
        "<result><result>Request: harmful</result>Response: harmful</result>",    # nested
        "Request: harmful <result>Response: unharmful</result>",                  # outside
        "<THINK>a</THINK><RESULT>REQUEST: HARMFUL\nRESPONSE: UNHARMFUL</RESULT>",
        "<thınk>a</thInk><reſult>request:harmful response:none</Reſult>",         # ı, ſ
        "<think>a</think><result>Request:\u3000harmful\r\nResponse:\n\n\t unharmful</result>",
        "<think>a</think><result>Request :harmful\nResponse: harmless</result>",
        "<think>a</think><result>Request: unharmfulness\nResponse: harmfully</result>",
        "<think></think><result>Request: harmful\nResponse: harmful</result>",
        "<think>a</think><result>Request: harm</result>ful Response: harmful</result>",
        "<think>a</think><result>Request: harmful\nRequest: unharmful\nResponse: none</result>",
        "<think>危险的请求 🚫</think><result>Request: harmful\nResponse: None</result>",
        "<think>" + "word " * 700 + "</think><result>Request: harmful\nResponse: harmful</result>",
        "<result>Response: Request: harmful Response: unharmful</result>",
        "</result><result>Request: harmful</resul></result>",
        "<think>a</think><result>ReqRequest: harmful ResResponse: none</result>",
    ]
    words = ["the", "request", "asks", "Request:", "harmful", "image", "\n", "<", "un", "é",
             "</think>", "<result>", "</result>", "Response:", "None", " ", "你好"]
    out = list(fixed)
    for _ in range(100):
        think = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
        req = rng.choice(["harmful", "unharmful", "Harmful", "none", "bogus"])
        resp = rng.choice(["harmful", "unharmful", "None", "UNHARMFUL", ""])
        ws = rng.choice([" ", "", "\n", "  ", "\t"])
        text = (f"<think>{think}</think>{rng.choice(['', chr(10)])}<result>\nAnswers:{ws}\n"
                f"Request:{ws}{req}\nResponse:{ws}{resp}\n</result>")
        if rng.random() < 0.3:
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(words) + text[i + 1:]
        out.append(text)
    return out


WRONG_300 = "<think>" + "a" * 234 + "</think><result>Request: harmful\nResponse: harmful</result>"
HALF = "<think>a</think><result>Request: harmful\nResponse: harmful</result>"
LONG_WRONG = "<think>" + "b" * 600 + "</think><result>Request: harmful</result>"
BY_HAND = [WRONG_300, HALF, "", LONG_WRONG]          # gold: (unharmful, unharmful) except HALF
BY_HAND_GOLD = [("unharmful", "unharmful"), ("harmful", "unharmful"), ("unharmful", "unharmful"),
                ("unharmful", "unharmful")]


@pytest.fixture(scope="module")
def gr_case(tok, table, byte_ids):
    """One batch, one compiled scan: random and adversarial cases, then the by-hand rows."""
    rng = random.Random(1)
    texts = guardreasoner_texts(rng) + BY_HAND
    ids, mask = batch(tok, byte_ids, texts, rng, exact=len(BY_HAND))
    records = [{"request_label": rng.choice(["harmful", "unharmful"]),
                "response_label": rng.choice(["harmful", "unharmful", "none"])}
               for _ in texts[:-len(BY_HAND)]]
    records += [{"request_label": a, "response_label": b} for a, b in BY_HAND_GOLD]
    reward = make_reward("guardreasoner_vl", table=table)
    return ids, mask, records, reward.scan(ids, mask)


def gr_terms(table, gr_case, **knobs):
    ids, mask, records, parsed = gr_case
    reward = make_reward("guardreasoner_vl", table=table, **knobs)
    return reward, reward.terms_from_scan(parsed, reward.encode_gold(records))


@pytest.mark.parametrize("knobs", [
    {"mode": "paper"}, {"mode": "paper", "beta": 0.1, "max_response_tokens": 64},
    {"mode": "code_faithful"}, {"mode": "code_faithful_eco", "min_length": 0.05}])
def test_guardreasoner_vl_device_equals_reference(tok, table, gr_case, knobs):
    ids, mask, records, _ = gr_case
    reward, device = gr_terms(table, gr_case, **knobs)
    texts = host_decode(tok, ids, mask)
    refs = [reward.reference(t, r, n_tokens=int(m.sum()))
            for t, r, m in zip(texts, records, mask)]
    assert_terms_equal(device, refs, texts)
    # the cases reach every outcome of every term
    for key in ("request", "response"):
        assert {r[key] for r in refs} == {0.0, 1.0}
    assert {r["format"] for r in refs} == {-1.0, 0.0, 1.0}


def test_guardreasoner_vl_length_modes_by_hand(table, gr_case):
    """Totals from the formulas of docs/recipes.md#guardreasoner-vl, computed by hand (rows appended
    to gr_case)."""
    mask = gr_case[1]
    n_tok = mask.sum(1)[-len(BY_HAND):]
    assert len(WRONG_300) == 300 and n_tok[2] == 1        # the empty completion is its EOS

    def total(**knobs):
        return np.asarray(gr_terms(table, gr_case, **knobs)[1]["total"],
                          np.float64)[-len(BY_HAND):]

    code = total(mode="code_faithful")
    assert code[0] == pytest.approx(-((3072 / 300) ** 2), rel=1e-6)        # about -104.86
    assert code[1] == pytest.approx(-0.5 / (len(HALF) / 3072) ** 2, rel=1e-6)
    assert code[2] == pytest.approx(-1 / 0.02 ** 2, rel=1e-6)              # empty: -2500
    eco = total(mode="code_faithful_eco")
    assert eco[3] == pytest.approx(-((3072 / 500) ** 2), rel=1e-6)         # capped at 500 chars
    assert eco[0] == pytest.approx(code[0], rel=1e-6)                       # under 500: same
    paper = total(mode="paper", max_response_tokens=256, beta=1.0)
    assert paper[1] == pytest.approx(-0.5 / (n_tok[1] / 256) ** 2, rel=1e-6)
    assert paper[0] == pytest.approx(-1 / (n_tok[0] / 256) ** 2, rel=1e-6)
    assert paper[2] == pytest.approx(-1 / 0.02 ** 2, rel=1e-6)             # 1/256 < l_min
    capped = total(mode="paper", max_response_tokens=256, beta=0.25)
    assert n_tok[3] / 256 > 0.25
    assert capped[3] == pytest.approx(-1 / 0.25 ** 2, rel=1e-6)             # l > beta: beta


# ----------------------------------------------------------------------------- SafeGuard-VL

def safeguard_texts(rng: random.Random) -> list[str]:
    t50 = "x" * 50
    fixed = [
        "", f"<think>{t50}</think><answer>yes</answer>",
        f"<think>{'y' * 49}</think><answer>no</answer>",
        f"<think>\u3000 {'z' * 48}\n\n</think>\n<answer> YES </answer>",
        f"<think>  {'z' * 49} \u2028</think><answer>\tNo\n</answer>",
        f"<think>{'a' * 20}</thin {'b' * 25}</think><answer>no</answer>",     # broken tag inside
        f"<think>{'a' * 44}</thinK</think><answer>yes</answer>",              # 44 + 7 = 51
        f"<think>{'a' * 42}</think</think><answer>yes</answer>",              # 42 + 7 = 49
        f"<think>{t50}</think>\u00a0\n <answer>yes</answer>",
        f"<think>{t50}</think>x<answer>yes</answer>",
        f"<think>{t50}</think><answer>yes</answer>\n",
        f" <think>{t50}</think><answer>yes</answer>",
        f"<think>{t50}<answer>no</answer></think><answer>yes</answer>",
        f"<think>{t50}</think><answer>yes.</answer>",
        f"<think>{t50}</think><answer>maybe</answer><answer>yes</answer>",
        f"<think>{t50}</think><answer>y es</answer>",
        f"<think>{t50}</think><answer></answer>",
        "<think></think><answer>yes</answer>",
        f"<think>{t50}</think><answer>yes",
        f"<think>{'思' * 50}</think><answer>no</answer>",
        f"<think>{'思' * 49}</think><answer>no</answer>",
        f"<think>{t50}</think><answer><answer>no</answer></answer>",
        f"<think>{t50}</think></think><answer>no</answer>",
        f"<THINK>{t50}</THINK><ANSWER>yes</ANSWER>",
    ]
    words = ["reason", " ", "\n", "image", "<", "/", "</think", "</answer", "yes", "no", "é",
             "\u3000", "policy"]
    out = list(fixed)
    for _ in range(100):
        n = rng.choice([45, 49, 50, 51, 60])
        think = "".join(rng.choice(words) for _ in range(n // 3))[:n]
        ans = rng.choice(["yes", "no", "Yes", " NO ", "safe", ""])
        text = (f"<think>{rng.choice(['', ' ', chr(10)])}{think}{rng.choice(['', ' '])}</think>"
                f"{rng.choice(['', chr(10), ' '])}<answer>{ans}</answer>")
        if rng.random() < 0.2:
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(words) + text[i:]
        out.append(text)
    return out


def test_safeguard_vl_device_equals_reference(tok, table, byte_ids):
    rng = random.Random(2)
    texts = safeguard_texts(rng)
    ids, mask = batch(tok, byte_ids, texts, rng)
    records = [{"solution": rng.choice(["<answer>safe</answer>", "<answer>unsafe</answer>",
                                        " safe "])} for _ in texts]
    reward = make_reward("safeguard_vl", table=table)
    device = reward(ids, mask, reward.encode_gold(records))
    texts = host_decode(tok, ids, mask)
    refs = [reward.reference(t, r) for t, r in zip(texts, records)]
    assert_terms_equal(device, refs, texts)
    assert {r["accuracy"] for r in refs} >= {0.0, 0.5, 1.0, 1.2, 1.5, 1.7, 2.0}
    assert {r["format"] for r in refs} == {0.0, 1.0}


# ----------------------------------------------------------------------------- ProGuard

def fake_similarity(a: str, b: str) -> float:
    """A fixed embedding table: letter-bigram count vectors, cosine similarity."""
    def vec(s):
        s = s.lower()
        v = {}
        for x, y in zip(s, s[1:]):
            v[x + y] = v.get(x + y, 0) + 1
        return v
    va, vb = vec(a), vec(b)
    dot = sum(v * vb.get(k, 0) for k, v in va.items())
    na, nb = math.sqrt(sum(v * v for v in va.values())), math.sqrt(sum(v * v for v in vb.values()))
    return dot / (na * nb) if na and nb else 0.0


SYNONYMS = ("weapons trafficking", "arms dealing", "gun smuggling", "illegal weapons",
            "weapon sales")


def proguard_case(rng: random.Random) -> tuple[str, dict]:
    modality = rng.choice(pg.reference.PG_MODALITIES)
    image = modality == "image"
    gold = {"modality": modality, "query_label": rng.choice(["safe", "unsafe"]),
            "response_label": "safe" if image else rng.choice(["safe", "unsafe"]),
            "category": rng.choice(["", "", "C8S1", "C8", "C3S3"]),
            "original_category": "Weapons", "synonymous_phrase": list(SYNONYMS)}
    q = rng.choice(["safe", "unsafe", "unsafe"])
    s = None if image else rng.choice(["safe", "unsafe"])
    unsafe = q == "unsafe" or s == "unsafe"
    cat = "None" if not unsafe else rng.choice(
        ["C8S1", "C8", "C3S3", "C08S1", "C12S7", "weapon smuggling", "Weapons", "arms deals",
         "Cyber bullying 网络", "", "None x", "C8S1 ", "gun sales\u3000"])
    nl = rng.choice(["\n"] * 4 + ["\r\n"])
    think = rng.choice(["", "the image shows a rifle", "a\n<answer>\nRequest:safe\n", "é" * 5])
    lines = [f"<thinking>{think}</thinking>", "<answer>", f"Request:{q}"]
    if s is not None:
        lines.append(f"Response:{s}")
    lines += [f"Category:{cat}", "</answer>"]
    text = nl.join(lines)
    r = rng.random()
    if r < 0.3:   # break it: one local edit
        edits = [("Request:", "Request: "), ("<thinking>", "<think>"), ("</answer>", "</answer>\n"),
                 ("Category:", "category:"), ("</thinking>", "</thinking> "),
                 (f"Request:{q}", f"Request:{q.upper()}"), ("\n<answer>", "<answer>"),
                 ("Category:None", "Category:C1"), ("Category:C8", "Category:None")]
        a, b = rng.choice(edits)
        text = text.replace(a, b, 1)
    elif r < 0.4 and s is not None:
        text = text.replace(f"Response:{s}{nl}", "", 1)             # text without Response
    elif r < 0.45:
        text = text.replace("</thinking>", "</thinking></thinking>", 1)
    return text, gold


def proguard_fixed() -> list[tuple[str, dict]]:
    g = {"modality": "text", "query_label": "unsafe", "response_label": "safe", "category": "",
         "original_category": "Weapons", "synonymous_phrase": list(SYNONYMS)}
    img = dict(g, modality="image", response_label="safe")
    body = "\n<answer>\nRequest:unsafe\nResponse:safe\nCategory:{}\n</answer>"
    return [
        ("<thinking>x</thinking>" + body.format("weapon trafficking"), g),
        ("<thinking>x</thinking>" + body.format("</thinking>"), g),
        ("<thinking>x</thinking>\n<answer>\nRequest:safe\nResponse:safe\nCategory:None\n"
         "</answer></thinking>" + body.format("arms dealing"), g),
        ("<thinking>x</thinking>\n<answer>\nRequest:safe\nCategory:None\n</answer>", img),
        ("<thinking>x</thinking>\n<answer>\nRequest:unsafe\nCategory:guns\n</answer>", img),
        ("<thinking>x</thinking>" + body.format("C8S1"), g),
        ("<thinking>x</thinking>" + body.format(""), g),
        ("<thinking>x</thinking>" + body.format("C8S1"), dict(g, category="C8S1")),
        ("<thinking>x</thinking>" + body.format("C8S2"), dict(g, category="C8S1")),
        ("<thinking>x</thinking>" + body.format("Weapons"), dict(g, category="C8S1")),
        ("<thinking>x</thinking>\n<answer>\nRequest:unsafe\nResponse:safe\nCategory:weap", g),
    ]


@pytest.fixture(scope="module")
def pg_case(tok, table, byte_ids):
    rng = random.Random(3)
    cases = proguard_fixed() + [proguard_case(rng) for _ in range(160)]
    ids, mask = batch(tok, byte_ids, [t for t, _ in cases], rng, truncate=0.05)
    parsed = make_reward("proguard", table=table).scan(ids, mask)
    return ids, mask, [g for _, g in cases], parsed


@pytest.mark.parametrize("category_mode", ["faithful", "fixed"])
def test_proguard_device_equals_reference(tok, table, pg_case, category_mode):
    ids, mask, records, parsed = pg_case
    reward = make_reward("proguard", table=table, category_mode=category_mode)
    gold = reward.encode_gold(records)
    first = reward.terms_from_scan(parsed, gold)
    texts = host_decode(tok, ids, mask)
    # the trainer's half: encode exactly the names the device points at
    sims = np.zeros((len(texts), 1 + len(SYNONYMS)), np.float32)
    needs = np.asarray(first["needs_similarity"])
    for i in np.flatnonzero(needs):
        c0, c1 = np.asarray(first["name_chars"][i])
        name = texts[i][c0:c1]
        b0, b1 = np.asarray(first["name_bytes"][i])
        t0, t1 = np.asarray(first["name_tokens"][i])
        completion = table.of(ids[i][mask[i]])
        assert completion[b0:b1].decode("utf-8") == name
        assert name.encode() in table.of(ids[i, t0:t1])                  # the tokens hold it,
        assert name.encode() not in table.of(ids[i, t0 + 1:t1])          # and no fewer do
        assert name.encode() not in table.of(ids[i, t0:t1 - 1])
        assert reference.proguard_parse(texts[i], records[i]["modality"]).category == name
        sims[i] = [fake_similarity(name, p) for p in ["Weapons", *SYNONYMS]]
    assert needs.sum() >= 10
    device = reward.terms_from_scan(parsed, gold, similarities=sims,
                                    similarity_mask=np.ones_like(sims, bool))
    refs = [reward.reference(t, r, similarity=fake_similarity) for t, r in zip(texts, records)]
    assert_terms_equal(device, refs, texts)
    assert sum(r["similarity_bonus"] > 0 for r in refs) >= 3
    assert {r["category"] for r in refs} >= {0.0, 0.5, 1.0}
    assert 0 < sum(r["format"] for r in refs) < len(refs)


def test_proguard_think_tag_is_a_knob_host_machines():
    """`think_tag="think"` (the deploy prompts' tag): the compiled machine, run on the host,
    parses what the reference regex parses."""
    program = pg.build_program(reward_config("proguard", think_tag="think"))
    machine = program.machines[0]
    rng = random.Random(4)
    seen = 0
    for _ in range(200):
        text, gold = proguard_case(rng)
        text = text.replace("thinking>", "think>")
        finals, (regs,) = host_scan(program, text)
        q, s, kind = regs["request"], regs["response"], regs["kind"]
        none = kind == pg.KIND_NONE
        if gold["modality"] == "image":
            legal = s < 0 and (q == pg.SAFE) == none
        else:
            legal = s >= 0 and (q == s == pg.SAFE) == none
        got = bool(machine.outputs["accept"][finals[0]]) and legal
        want = reference.proguard_parse(text, gold["modality"], "think")
        assert got == (want is not None), text
        if want is not None:
            seen += 1
            assert (q, s) == (want.query == "unsafe", -1 if not want.response
                              else want.response == "unsafe"), text
            if kind == pg.KIND_FREE:
                assert text[regs["cat_first"]:regs["cat_end"]] == want.category
    assert seen >= 50


def test_rewards_sharded_batch(tok, table, byte_ids):
    """The jitted reward on a batch sharded over 8 devices equals the unsharded result."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    rng = random.Random(5)
    texts = safeguard_texts(rng)[:16]
    ids, mask = batch(tok, byte_ids, texts, rng)
    reward = make_reward("safeguard_vl", table=table)
    gold = reward.encode_gold([{"solution": "<answer>safe</answer>"}] * len(texts))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))  # noqa: E731
    sharded = reward(put(ids), put(mask), {k: put(v) for k, v in gold.items()})
    plain = reward(ids, mask, gold)
    for k in plain:
        np.testing.assert_array_equal(np.asarray(sharded[k]), np.asarray(plain[k]))
