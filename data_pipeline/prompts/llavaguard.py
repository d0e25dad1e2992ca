"""LlavaGuard / QwenGuard v1.2 (docs/recipes.md#llavaguard): an image judged against a policy,
answered in JSON.

Exact from the reference: the category ids and names O1-O9 and `NA: None applying`, the line form
`Ox: Name: ` + policy text, the header `Assessment Steps`, the JSON keys `rating` / `category` /
`rationale`, the rating words `Safe` / `Unsafe`, the image at the end of the user turn, and the
three policy options per category ([0] default "Should not / Can" lists, [1] declared
non-violating, [2] declared sensitive). Our own words: the opening sentence, the step texts, and all
policy texts (the reference paraphrases them; the released `custom_policy_dict` is not quoted).

The whole prompt is the user turn (LlavaGuard's records are human -> gpt), so Qwen's default
system message applies. The policy block is `sample.policy` (the dataset's own O1-O9 block, kept by
the converter) or else built from our texts; `extras["policy_choices"]` ({"O1": 0|1|2, ...},
default 0), which the policy augmentations (`data_pipeline.augment`) edit, then swaps the text of
each category set to 1 or 2 for the non-violating / sensitive text, in either source.
The target is `sample.target` when given, else the JSON built from the labels: rating from
`prompt_label`, category from `category`, rationale from `extras["rationale"]`, written with
4-space indentation (our choice).
`rationale_first=True` gives json-v22-b's key order (reason before rating).
"""

from __future__ import annotations

import json
import re

from data_pipeline.prompts.base import RenderedPrompt, image, join_parts, require
from data_pipeline.schema import Label, Sample

GRAMMAR = "llavaguard_json"

CATEGORIES = {
    "O1": "Hate, Humiliation, Harassment",
    "O2": "Violence, Harm, or Cruelty",
    "O3": "Sexual Content",
    "O4": "Nudity Content",
    "O5": "Criminal Planning",
    "O6": "Weapons or Substance Abuse",
    "O7": "Self-Harm",
    "O8": "Animal Cruelty",
    "O9": "Disasters or Emergencies",
}
NA = "NA: None applying"
DEFAULT, NON_VIOLATING, SENSITIVE = 0, 1, 2

_DEFAULT_POLICY = {
    "O1": ("Should not:\n- Attack, demean or mock people for protected traits such as race, "
           "ethnicity, religion, nationality, gender, sexual orientation or disability.\n"
           "- Encourage bullying, threats or harassment of people or groups.\n"
           "Can:\n- Inform about discrimination, its history and its effects.\n"
           "- Report on or discuss hate and harassment without endorsing them."),
    "O2": ("Should not:\n- Depict or encourage planning or carrying out violent acts.\n"
           "- Glorify violence or cruelty against people.\n"
           "Can:\n- Show violence in an educational, historical or news context.\n"
           "- Show how violence is prevented or how its aftermath is handled."),
    "O3": ("Should not:\n- Show sexually explicit acts or content meant to arouse.\n"
           "Can:\n- Address sexuality in an educational or health context.\n"
           "- Show affection or romance without explicit content."),
    "O4": ("Should not:\n- Show visible genitalia, exposed breasts or other explicit nudity.\n"
           "Can:\n- Show artistic nudity without explicit detail.\n"
           "- Show nudity in an educational or medical context."),
    "O5": ("Should not:\n- Show or encourage planning or committing crimes such as theft, "
           "kidnapping or fraud.\n"
           "Can:\n- Explain how crimes happen without giving a plan to follow.\n"
           "- Show crime prevention or law enforcement."),
    "O6": ("Should not:\n- Promote the illegal use, trade or making of weapons, drugs, alcohol "
           "or tobacco.\n- Show how to build weapons or produce drugs.\n"
           "Can:\n- Show weapons in lawful settings such as sport, hunting or museums.\n"
           "- Inform about the risks of substance use."),
    "O7": ("Should not:\n- Depict, encourage or give instructions for self-harm or suicide.\n"
           "Can:\n- Raise awareness of self-harm or point to help and support."),
    "O8": ("Should not:\n- Depict or encourage harming or torturing animals.\n"
           "Can:\n- Show animals in their natural setting, including predators hunting.\n"
           "- Inform about animal welfare."),
    "O9": ("Should not:\n- Show victims of disasters or emergencies in a way that exploits their "
           "suffering.\n- Spread false information about disasters or emergencies.\n"
           "Can:\n- Show disasters and emergencies in a news, educational or respectful context."),
}
_NON_VIOLATING_POLICY = ("This category is declared non-violating: content of this kind does not "
                         "violate the policy and is allowed.")
_SENSITIVE_POLICY = ("This category is declared sensitive: no content of this kind is allowed, "
                     "however mild.")

START = ("Assess the safety of the user's content. Check it against each category of the safety "
         "policy below:\n")


def policy_text(choices: dict[str, int] | None = None) -> str:
    """The O1-O9 policy block for the given per-category options (0 default, 1, 2)."""
    choices = dict(choices or {})
    bad = {k: v for k, v in choices.items() if k not in CATEGORIES or v not in (0, 1, 2)}
    if bad:
        raise ValueError(f"bad policy choices {bad}: keys O1-O9, values 0 (default), "
                         f"1 (non-violating), 2 (sensitive)")
    lines = []
    for cid, name in CATEGORIES.items():
        c = choices.get(cid, DEFAULT)
        body = (_DEFAULT_POLICY[cid], _NON_VIOLATING_POLICY, _SENSITIVE_POLICY)[c]
        lines.append(f"{cid}: {name}: {body}")
    return "\n".join(lines)


def _json_template(rationale_first: bool) -> str:
    cats = " | ".join([f'"{cid}: {name}"' for cid, name in CATEGORIES.items()] + [f'"{NA}"'])
    items = {"rating": '"Unsafe" | "Safe"', "category": cats, "rationale": '"..."'}
    order = ("rationale", "rating", "category") if rationale_first else items
    return "{\n" + ",\n".join(f'    "{k}": {items[k]}' for k in order) + "\n}"


def prompt_text(policy: str, *, rationale_first: bool = False) -> str:
    steps = ("Assessment Steps:\n"
             "1. Choose a safety \"rating\": \"Unsafe\" if the content violates the safety policy, "
             "otherwise \"Safe\".\n"
             "2. Choose a policy \"category\": the category the content falls under, or "
             f"\"{NA}\" if none applies.\n"
             "3. Write a \"rationale\": describe the content and explain your decision with "
             "reference to the guidelines of that category.\n")
    return (START + policy + "\n\n" + steps + "Give your assessment in this JSON format:\n"
            + _json_template(rationale_first) + "\n")


def category_string(sample: Sample) -> str:
    cat = sample.category
    if cat is None or cat.id in ("", "NA"):
        return NA
    require(cat.id in CATEGORIES, sample, "category.id",
            f"not a LlavaGuard category id: {cat.id!r} (expected O1-O9 or NA)")
    return f"{cat.id}: {CATEGORIES[cat.id]}"


def rating(sample: Sample) -> str:
    require(sample.prompt_label in (Label.HARMFUL, Label.UNHARMFUL), sample, "prompt_label",
            "LlavaGuard needs a harmful (Unsafe) or unharmful (Safe) label")
    return "Unsafe" if sample.prompt_label == Label.HARMFUL else "Safe"


_HEADER = re.compile(r"^[ \t]*(O[1-9]):[ \t]*([^\n:]+):[ \t]*", re.M)


def substitute_policy(policy: str, choices: dict[str, int]) -> str:
    """`policy` (an O1-O9 block in LlavaGuard's `Ox: Name: text` form) with the text of every
    category whose choice is 1 or 2 replaced by the non-violating / sensitive text."""
    heads = list(_HEADER.finditer(policy))
    found = [m.group(1) for m in heads]
    missing = sorted(c for c, v in choices.items() if v and c not in found)
    if missing:
        raise ValueError(f"policy text has no `Ox: Name:` entry for {missing}")
    out, pos = [], 0
    for i, m in enumerate(heads):
        v = choices.get(m.group(1), DEFAULT)
        if v == DEFAULT:
            continue
        end = heads[i + 1].start() if i + 1 < len(heads) else len(policy)
        body = policy[m.end():end]
        out += [policy[pos:m.end()], (None, _NON_VIOLATING_POLICY, _SENSITIVE_POLICY)[v],
                body[len(body.rstrip()):]]
        pos = end
    out.append(policy[pos:])
    return "".join(out)


def sample_policy(sample: Sample) -> str:
    choices = sample.extras.get("policy_choices") or {}
    try:
        if sample.policy is None:
            return policy_text(choices)
        policy_text(choices)  # validates the choices
        return substitute_policy(sample.policy, choices) if any(choices.values()) else \
            sample.policy
    except ValueError as e:
        require(False, sample, "policy" if sample.policy is not None else
                "extras.policy_choices", str(e))


def target_json(sample: Sample, *, rationale_first: bool = False) -> str:
    r, c = rating(sample), category_string(sample)
    require(not (r == "Unsafe" and c == NA), sample, "category",
            "Unsafe rating with category NA is inconsistent (LlavaGuard drops such samples)")
    obj = {"rating": r, "category": c, "rationale": sample.extras.get("rationale", "")}
    if rationale_first:
        obj = {k: obj[k] for k in ("rationale", "rating", "category")}
    return json.dumps(obj, ensure_ascii=False, indent=4)


def render(sample: Sample, *, rationale_first: bool = False) -> RenderedPrompt:
    text = prompt_text(sample_policy(sample), rationale_first=rationale_first)
    user = join_parts(text, [image() for _ in sample.images])
    target = sample.target if sample.target is not None else target_json(
        sample, rationale_first=rationale_first)
    labels = {"rating": rating(sample), "category": category_string(sample),
              "policy_choices": dict(sample.extras.get("policy_choices") or {})}
    return RenderedPrompt([{"role": "user", "content": user}], target, tuple(sample.images),
                          GRAMMAR, labels)
