"""Training-data augmentations of the guard recipes, each a pure function of samples + a seed.

* GuardReasoner-VL safety-aware concatenation and the rejection-sampling filter that
  precedes it (docs/recipes.md#guardreasoner-vl).
* LlavaGuard policy augmentations v1-v5 with their label rules (docs/recipes.md#llavaguard),
  which SafeGuard-VL's RL stage relies on.
* ProGuard out-of-taxonomy (OOD) category hiding (docs/recipes.md#proguard).

`augment(samples, config)` applies whichever of them a config names; configs hold plain values
(see `AugmentConfig`). Augmented samples get a new id, `extras["augmentation"]`, and `target=None`
wherever their labels changed (a stale SFT target would contradict them; renderers that can,
rebuild the target from the labels).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from data_pipeline.image_processing import to_rgb
from data_pipeline.prompts import guardreasoner_vl, llavaguard, proguard
from data_pipeline.prompts.base import modality
from data_pipeline.schema import Category, ImageRef, Label, Sample, SampleError, Task


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _error(sample: Sample, field: str, message: str) -> SampleError:
    return SampleError("augment", message, record=sample.id, field=field)


# ---------------------------------------------------------------------------------------------
# GuardReasoner-VL: safety-aware concatenation (docs/recipes.md#guardreasoner-vl)

def open_image(ref: ImageRef, root: str | os.PathLike | None = None) -> Image.Image:
    if ref.data is not None:
        return Image.open(io.BytesIO(ref.data))
    path = ref.path if root is None or os.path.isabs(ref.path) else os.path.join(root, ref.path)
    return Image.open(path)


def stitch_horizontally(images: Sequence[Image.Image], *, max_size: int = 1024) -> Image.Image:
    """Side by side on a white canvas as tall as the tallest (top-left aligned), then thumbnailed
    to fit max_size x max_size with the aspect kept (LANCZOS; never enlarged)."""
    images = [to_rgb(im) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)),
                       (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    canvas.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    return canvas


def _or_label(a: Label, b: Label) -> Label:
    """Eq. 5: harmful if either part is harmful. Two missing labels stay missing (none)."""
    if Label.HARMFUL in (a, b):
        return Label.HARMFUL
    return Label.NONE if a == b == Label.NONE else Label.UNHARMFUL


def _stored_transcript(s: Sample) -> str:
    if "transcript" in s.extras:
        return s.extras["transcript"]
    return guardreasoner_vl.transcript(s.user_text, s.response, with_image_marker=bool(s.images))


def concatenate(a: Sample, b: Sample, *, image_root=None, max_size: int = 1024) -> Sample:
    """One safety-aware concatenation of two GuardReasoner-VL samples (paper Eq. 4-5).

    Text: strip(t1) + " " + strip(t2) of the two `Human user: ... AI assistant: ...` transcripts,
    keeping one image slot (the first one; the second `<image>` is deleted). Image: both present ->
    stitched side by side and re-encoded as PNG; one present -> that image unchanged; none -> none
    (the renderer's `blank_image` mode then adds the 1x1 placeholder, as the released code keeps
    sample 1's). A placeholder image (`extras["blank_image"]`, from the RL converter) counts as no
    image, so a real image lands in sample 1's slot as in the released code.
    Labels: OR of the request labels and OR of the response labels. The released code's reward
    sees sample 1's labels instead (it parses the first `<result>` of the concatenated gold
    answers): those are kept in `extras["first_sample_labels"]` and the joined gold outputs in
    `extras["answer"]` for a code-faithful option.
    """
    for s in (a, b):
        if len(s.images) > 1:
            raise _error(s, "images", f"concatenation needs at most one image per sample, got "
                                      f"{len(s.images)}")
    t1, t2 = _stored_transcript(a).strip(), _stored_transcript(b).strip()
    marker = guardreasoner_vl.IMAGE_MARKER
    if marker in t1 and marker in t2:
        t2 = t2.replace(marker, "", 1)
    text = t1 + " " + t2
    real_a, real_b = (() if s.extras.get("blank_image") else tuple(s.images) for s in (a, b))
    if real_a and real_b:
        stitched = stitch_horizontally([open_image(real_a[0], image_root),
                                        open_image(real_b[0], image_root)], max_size=max_size)
        buf = io.BytesIO()
        stitched.save(buf, format="PNG")
        images = (ImageRef(data=buf.getvalue()),)
    else:  # one real image: it, unchanged; none: sample 1's placeholder (or 2's), if any
        images = real_a or real_b or tuple(a.images) or tuple(b.images)
    if text.count(marker) != len(images):
        raise _error(a, "extras.transcript", f"concatenated transcript has {text.count(marker)} "
                                             f"image slots for {len(images)} images")
    has_response = a.response is not None or b.response is not None
    task = a.task if a.task == b.task else (
        Task.RESPONSE_HARMFULNESS if has_response else Task.PROMPT_HARMFULNESS)
    return Sample(
        id=f"{a.id}+{b.id}", source=a.source, task=task,
        user_text=text.replace(marker, ""), images=images, response=None,
        prompt_label=_or_label(a.prompt_label, b.prompt_label),
        response_label=_or_label(a.response_label, b.response_label),
        extras={"transcript": text, "augmentation": "concat", "concat_of": [a.id, b.id],
                **({"blank_image": True} if images and not (real_a or real_b) else {}),
                "first_sample_labels": {"prompt_label": a.prompt_label.value,
                                        "response_label": a.response_label.value},
                "answer": (a.target or "") + (b.target or "")})


def concatenation_augment(samples: Sequence[Sample], n: int, *, seed=0, image_root=None,
                          max_size: int = 1024) -> list[Sample]:
    """n concatenations, each of 2 distinct samples drawn uniformly at random (no stratification).
    The recipe uses n = size of the RL-val split (20% of the final RL-train set)."""
    if n and len(samples) < 2:
        raise ValueError("concatenation needs at least 2 samples")
    rng = _rng(seed)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(samples), size=2, replace=False)
        out.append(concatenate(samples[int(i)], samples[int(j)], image_root=image_root,
                               max_size=max_size))
    return out


# ---------------------------------------------------------------------------------------------
# GuardReasoner-VL: rejection sampling / hard-sample mining (docs/recipes.md#guardreasoner-vl)

_RESULT = re.compile(r"<result>(.*?)</result>", re.IGNORECASE | re.DOTALL)
_REQUEST = re.compile(r"Request:\s*(harmful|unharmful|none)", re.IGNORECASE)
_RESPONSE = re.compile(r"Response:\s*(harmful|unharmful|none)", re.IGNORECASE)


def parse_result_labels(output: str, *, lenient: bool = False) -> tuple[Label, Label] | None:
    """(request, response) labels of a GuardReasoner-VL output, or None when unparseable.

    Default: the training reward's parser (first `<result>` block, `Request:` then `Response:`
    inside it, `none` read as unharmful). `lenient`: the eval parser (first matches anywhere).
    """
    if lenient:
        body = output
    else:
        m = _RESULT.search(output)
        if m is None:
            return None
        body = m.group(1)
    req = _REQUEST.search(body)
    if req is None:
        return None
    resp = _RESPONSE.search(body, req.end() if not lenient else 0)
    if resp is None:
        return None
    word = {"harmful": Label.HARMFUL, "unharmful": Label.UNHARMFUL, "none": Label.UNHARMFUL}
    return word[req.group(1).lower()], word[resp.group(1).lower()]


def _gold(label: Label) -> Label:
    return Label.UNHARMFUL if label == Label.NONE else label


def is_hard(sample: Sample, outputs: Sequence[str], *, keep_image_only: bool = True,
            parse: Callable[[str], tuple[Label, Label] | None] = parse_result_labels) -> bool:
    """True when no output gets both labels right (a parse failure is wrong). Image-only samples
    are always kept, as the released script forces their mismatch flag."""
    if keep_image_only and modality(sample) == "image":
        return True
    gold = (_gold(sample.prompt_label), _gold(sample.response_label))
    return not any(parse(o) == gold for o in outputs)


def rejection_sample(samples: Sequence[Sample], outputs: Sequence[Sequence[str]], *,
                     max_samples: int = 12000, val_fraction: float = 0.2, seed: int = 42,
                     keep_image_only: bool = True, parse=parse_result_labels):
    """Keep the hard samples (the recipe runs the R-SFT model 4 times, T=1.0, top_p=0.95), draw
    up to `max_samples` of them at random, and split them (train, val) with `val_fraction`.
    `outputs[i]` holds the generations for `samples[i]`."""
    if len(outputs) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(outputs)} output lists")
    kept = [s for s, outs in zip(samples, outputs)
            if is_hard(s, outs, keep_image_only=keep_image_only, parse=parse)]
    rng = _rng(seed)
    order = rng.permutation(len(kept))[:max_samples]
    drawn = [kept[int(i)] for i in order]
    n_val = int(round(len(drawn) * val_fraction))
    return drawn[n_val:], drawn[:n_val]


# ---------------------------------------------------------------------------------------------
# LlavaGuard policy augmentations (docs/recipes.md#llavaguard)

POLICY_VERSIONS = ("v1", "v2", "v2a", "v3", "v4", "v5", "dup")
NON_VIOLATING_EXCEPTION = "Non-Violating Exception"
SENSITIVE_EXCEPTION = "Sensitive Exception"


def _own_category(sample: Sample) -> str | None:
    cat = sample.category
    return cat.id if cat is not None and cat.id in llavaguard.CATEGORIES else None


def policy_applicable(sample: Sample, version: str) -> bool:
    """Whether `version` applies: v2/v2a/v1 need an unsafe sample with a category O1-O9, v4 a safe
    one with a category O1-O9; v3/v5/dup apply to any sample."""
    own = _own_category(sample)
    if version in ("v1", "v2", "v2a"):
        return sample.prompt_label == Label.HARMFUL and own is not None
    if version == "v4":
        return sample.prompt_label == Label.UNHARMFUL and own is not None
    return version in ("v3", "v5", "dup")


def _explain_flip(extras: dict, category: str, why: str) -> None:
    """Appends to the rationale why the policy change flipped the label."""
    extras["rationale"] = (extras.get("rationale", "") + f" The policy declares {category}: "
                           f"{llavaguard.CATEGORIES[category]} {why}.").strip()


def policy_augment(sample: Sample, version: str, rng=None, *, suffix: str = "") -> Sample:
    """One policy-augmented copy of a LlavaGuard sample.

    | version | policy change                                    | label            |
    | v1      | each other category non-violating with p = 0.5   | unchanged        |
    | v2      | own category non-violating                       | Unsafe -> Safe   |
    | v2a     | own + 0-2 other categories non-violating         | Unsafe -> Safe   |
    | v3      | 1-3 other categories non-violating               | unchanged        |
    | v4      | own category sensitive                           | Safe -> Unsafe   |
    | v5      | 1-3 other categories sensitive                   | unchanged        |
    | dup     | none (a plain duplicate)                         | unchanged        |
    The category stays the sample's own: the content still belongs to it, the policy just treats
    it differently. A flipped sample gets the exception score and a sentence appended to its
    rationale (our words) explaining the flip.
    """
    if version not in POLICY_VERSIONS:
        raise ValueError(f"unknown policy augmentation {version!r}; known: {POLICY_VERSIONS}")
    if sample.policy is not None:
        try:  # the dataset's own policy block: the edited categories must be findable in it
            llavaguard.substitute_policy(sample.policy, {c: 1 for c in llavaguard.CATEGORIES})
        except ValueError as e:
            raise _error(sample, "policy", f"cannot augment this policy text: {e}") from e
    if not policy_applicable(sample, version):
        raise _error(sample, "prompt_label", f"policy augmentation {version} does not apply to a "
                                             f"{sample.prompt_label.value} sample with category "
                                             f"{sample.category.id if sample.category else None}")
    rng = _rng(rng)
    own = _own_category(sample)
    others = [c for c in llavaguard.CATEGORIES if c != own]
    choices = {c: int(v) for c, v in (sample.extras.get("policy_choices") or {}).items()}
    label, extras = sample.prompt_label, dict(sample.extras)

    def pick(lo, hi):
        k = int(rng.integers(lo, hi + 1))
        return [others[int(i)] for i in rng.choice(len(others), size=k, replace=False)]

    if version == "v1":
        choices[own] = llavaguard.DEFAULT
        choices.update({c: llavaguard.NON_VIOLATING for c in others if rng.random() < 0.5})
    elif version in ("v2", "v2a"):
        extra = pick(0, 2) if version == "v2a" else []
        choices.update({c: llavaguard.NON_VIOLATING for c in [own, *extra]})
        label = Label.UNHARMFUL
        extras["score"] = NON_VIOLATING_EXCEPTION
        _explain_flip(extras, own, "non-violating, so this content is allowed")
    elif version == "v3":
        choices.update({c: llavaguard.NON_VIOLATING for c in pick(1, 3)})
    elif version == "v4":
        choices[own] = llavaguard.SENSITIVE
        label = Label.HARMFUL
        extras["score"] = SENSITIVE_EXCEPTION
        _explain_flip(extras, own, "sensitive, so no content of this kind is allowed")
    elif version == "v5":
        choices.update({c: llavaguard.SENSITIVE for c in pick(1, 3)})
    extras["policy_choices"] = choices
    extras["augmentation"] = version
    flipped = label != sample.prompt_label
    return dataclasses.replace(sample, id=f"{sample.id}_{version}{suffix}", prompt_label=label,
                               target=None if flipped else sample.target,
                               extras=extras)


@dataclasses.dataclass(frozen=True)
class PolicyAugmentConfig:
    """Copies made per sample: each `unsafe` entry once per unsafe sample (suffix a, b, c for
    repeats), each `safe` (version, probability) entry per safe sample. Versions that do not apply
    to a sample are skipped for it; the originals are always kept."""
    unsafe: tuple[str, ...] = ("v3", "v3", "v3", "v2")
    safe: tuple[tuple[str, float], ...] = ()
    seed: int = 0


# Which augmentations each template version uses (docs/recipes.md#llavaguard). json-v14/v15's
# probabilities for safe samples are the published "about 10%" (v3) and "about 25%" (v5); v4 goes
# to every eligible one.
POLICY_PRESETS = {
    "v1.2": PolicyAugmentConfig(),
    "v1.2-v2a": PolicyAugmentConfig(unsafe=("v3", "v3", "v3", "v2a")),
    "json-v14": PolicyAugmentConfig(unsafe=("dup", "v5", "v3", "v3", "v3", "v2"),
                                    safe=(("v4", 1.0), ("v3", 0.1), ("v5", 0.25))),
}


def apply_policy_augmentations(samples: Sequence[Sample], config: PolicyAugmentConfig | str
                               ) -> list[Sample]:
    if isinstance(config, str):
        config = POLICY_PRESETS[config]
    rng = _rng(config.seed)
    out = []
    for s in samples:
        out.append(s)
        if s.prompt_label == Label.HARMFUL:
            plan = [(v, 1.0) for v in config.unsafe]
        elif s.prompt_label == Label.UNHARMFUL:
            plan = list(config.safe)
        else:
            raise _error(s, "prompt_label", "LlavaGuard samples need a safe/unsafe label")
        seen: dict[str, int] = {}
        for version, p in plan:
            if not policy_applicable(s, version) or (p < 1.0 and rng.random() >= p):
                continue
            n = seen[version] = seen.get(version, 0) + 1
            repeats = sum(1 for v, _ in plan if v == version)
            suffix = f"_{'abcdefghijklmnopqrstuvwxyz'[n - 1]}" if repeats > 1 else ""
            out.append(policy_augment(s, version, rng, suffix=suffix))
    return out


# ---------------------------------------------------------------------------------------------
# ProGuard OOD category hiding (docs/recipes.md#proguard)

def hide_true_category(sample: Sample, rng=None, *, max_extra_hidden: int = 0) -> Sample:
    """Hide the sample's true main category (with its subcategories) from the prompt's list, plus
    0..max_extra_hidden random others; the sample becomes OOD: category id "", its name and
    synonyms kept (in `category` and in extras `original_category` / `synonymous_phrase`) for the
    similarity reward."""
    cat = sample.category
    if cat is None or not cat.id:
        raise _error(sample, "category", "OOD hiding needs a sample with an in-taxonomy category")
    if Label.HARMFUL not in (sample.prompt_label, sample.response_label):
        raise _error(sample, "prompt_label", "OOD hiding needs an unsafe sample")
    try:
        true_main = proguard.main_id(cat.id)
    except ValueError as e:
        raise _error(sample, "category.id", str(e)) from e
    rng = _rng(rng)
    provided = [c for c in (sample.extras.get("provided_categories") or proguard.ALL_CATEGORIES)
                if c != true_main]
    k = int(rng.integers(0, max_extra_hidden + 1)) if max_extra_hidden else 0
    drop = set(rng.choice(provided, size=min(k, len(provided) - 1), replace=False).tolist()) \
        if k else set()
    provided = [c for c in provided if c not in drop]
    gold_id = true_main if modality(sample) == "text-image" else cat.id
    name = cat.name or proguard.category_name(gold_id)
    extras = dict(sample.extras, provided_categories=provided, original_category=name,
                  synonymous_phrase=list(cat.synonyms), hidden_category=cat.id,
                  augmentation="ood")
    return dataclasses.replace(sample, id=f"{sample.id}_ood",
                               category=Category("", name, tuple(cat.synonyms)), target=None,
                               extras=extras)


def show_category_subset(sample: Sample, rng=None, *, max_hidden: int = 3) -> Sample:
    """In-taxonomy counterpart: hide 1..max_hidden categories other than the true one, so that a
    shortened list does not by itself announce an OOD sample."""
    rng = _rng(rng)
    keep = proguard.main_id(sample.category.id) if sample.category and sample.category.id else None
    provided = list(sample.extras.get("provided_categories") or proguard.ALL_CATEGORIES)
    others = [c for c in provided if c != keep]
    k = min(int(rng.integers(1, max_hidden + 1)), max(len(others) - 1, 0))
    drop = set(rng.choice(others, size=k, replace=False).tolist()) if k else set()
    return dataclasses.replace(sample, extras=dict(
        sample.extras, provided_categories=[c for c in provided if c not in drop]))


@dataclasses.dataclass(frozen=True)
class OODConfig:
    prob: float = 0.0  # chance that an eligible (unsafe, categorised) sample is made OOD
    max_extra_hidden: int = 0  # also hide up to this many other categories on OOD samples
    subset_prob: float = 0.0  # chance that another sample shows a random category subset
    subset_max_hidden: int = 3
    replace: bool = True  # replace the sample, or add the OOD copy next to it
    seed: int = 0


def apply_ood_hiding(samples: Sequence[Sample], config: OODConfig) -> list[Sample]:
    rng = _rng(config.seed)
    out = []
    for s in samples:
        eligible = (s.category is not None and bool(s.category.id)
                    and Label.HARMFUL in (s.prompt_label, s.response_label))
        if eligible and rng.random() < config.prob:
            if not config.replace:
                out.append(s)
            out.append(hide_true_category(s, rng, max_extra_hidden=config.max_extra_hidden))
        elif config.subset_prob and rng.random() < config.subset_prob:
            out.append(show_category_subset(s, rng, max_hidden=config.subset_max_hidden))
        else:
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations `augment` applies (None = off)."""
    policy: PolicyAugmentConfig | str | None = None
    ood: OODConfig | None = None
    concat_count: int = 0  # GuardReasoner-VL concatenations appended to the samples
    concat_seed: int = 0

    @classmethod
    def from_dict(cls, d) -> "AugmentConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown augmentation keys {sorted(unknown)}")
        policy = d.get("policy")
        if isinstance(policy, dict):
            policy = PolicyAugmentConfig(
                unsafe=tuple(policy.get("unsafe", PolicyAugmentConfig.unsafe)),
                safe=tuple(tuple(x) for x in policy.get("safe", ())),
                seed=policy.get("seed", 0))
        ood = d.get("ood")
        if isinstance(ood, dict):
            ood = OODConfig(**ood)
        return cls(policy=policy, ood=ood, concat_count=int(d.get("concat_count", 0)),
                   concat_seed=int(d.get("concat_seed", 0)))


def augment(samples: Sequence[Sample], config: AugmentConfig | dict, *, image_root=None
            ) -> list[Sample]:
    if not isinstance(config, AugmentConfig):
        config = AugmentConfig.from_dict(config)
    out = list(samples)
    if config.policy is not None:
        out = apply_policy_augmentations(out, config.policy)
    if config.ood is not None:
        out = apply_ood_hiding(out, config.ood)
    if config.concat_count:
        out += concatenation_augment(out, config.concat_count, seed=config.concat_seed,
                                     image_root=image_root)
    return out
