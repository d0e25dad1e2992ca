"""`guard-jax moderate`: one input through a guard model, one JSON verdict on stdout.

    guard-jax moderate --model (HF_DIR | CKPT_DIR) --recipe R
        [--prompt TEXT | --prompt-file FILE] [--response TEXT | --response-file FILE]
        [--image PATH]... [--video PATH]... [--video-fps F] [--max-frames N]
        [--policy FILE] [--option KEY=VALUE]... [--max-new-tokens N]
        [--max-prompt-tokens N] [--dtype bfloat16|float32|float16] [--step N]

The input goes the way of training and `guard-jax eval`: a `data_pipeline.schema.Sample` built
from the arguments, the recipe's renderer (`data_pipeline.prompts`), the Qwen2-VL image and
video preprocessing, the chat template with the generation prompt, greedy decoding through
`guard_jax.generate`, and the recipe's lenient parser (`guard_jax.evaluation.parsers`). A
training checkpoint is first exported to a temporary HF directory, so the verdict comes from the
very files transformers or vLLM would serve. Nothing here is device-specific: the model lands on
JAX's default device (a GPU when there is one, else the CPU).

Bad input raises `UsageError` (a `guard_jax.errors.InputError`: one line, exit 2) before the
model loads where it can: arguments, text files, images and videos (the checks of
`guard-jax data build`, data_pipeline/image_validation.py and video_validation.py), and, once the prompt is rendered and tokenized but before
anything compiles, its length against --max-prompt-tokens and the model's context
(docs/moderate.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from guard_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class RecipeDefaults:
    options: str  # renderer options, as in eval.recipe_options
    max_new_tokens: int
    max_pixels: int
    reads_text: bool  # the prompt shows the user's text (the policy recipes judge images only)
    takes_response: bool
    takes_policy: bool
    max_prompt_tokens: int  # eval.max_prompt_len: longer rendered prompts are refused


# The settings of configs/eval/*.py, so a verdict here matches what `guard-jax eval` scores.
# vlmguard_r1 has no eval config: its prompt cap is its training seq_len.
RECIPES = {
    "guardreasoner_vl": RecipeDefaults("mode='sft',use_sample_instruction=False", 4096, 1003520,
                                       True, True, False, 8192),
    "proguard": RecipeDefaults("think_tag='thinking'", 1024, 1003520, True, True, False, 4096),
    "safeguard_vl": RecipeDefaults("mode='eval'", 64, 1003520, False, False, True, 4096),
    "llavaguard": RecipeDefaults("rationale_first=False", 512, 262144, False, False, True, 8192),
    "vlmguard_r1": RecipeDefaults("", 1024, 1003520, True, False, False, 4096),
}
MIN_PIXELS = 3136  # the run config's default (4 merged patches)
# videos: the run config's data.* defaults (frames sampled at VIDEO_FPS, 4..max frames)
VIDEO_FPS, MIN_FRAMES, MAX_FRAMES = 2.0, 4, 16
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 3136, 100352
POLICY_RECIPES = ("safeguard_vl", "llavaguard")


class UsageError(InputError):
    """Bad arguments or input files; the message says which (`guard-jax` exits 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="an HF directory (config.json + safetensors) or a training workdir")
    p.add_argument("--recipe", required=True, help=f"one of {', '.join(RECIPES)}")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="the user's text (the request to judge; "
                        "the prompt to rewrite for vlmguard_r1)")
    prompt.add_argument("--prompt-file", default=None, metavar="FILE",
                        help="read the user's text from a UTF-8 file (one final newline dropped)")
    response = p.add_mutually_exclusive_group()
    response.add_argument("--response", default=None,
                          help="the assistant's reply to judge (guardreasoner_vl, proguard)")
    response.add_argument("--response-file", default=None, metavar="FILE",
                          help="read the reply from a UTF-8 file (one final newline dropped)")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image of the user turn (repeatable, in order)")
    p.add_argument("--video", action="append", default=[], metavar="PATH",
                   help="a video of the user turn (repeatable, in order; placed before the "
                        "images)")
    p.add_argument("--video-fps", type=float, default=VIDEO_FPS,
                   help=f"video frames sampled per second (default {VIDEO_FPS})")
    p.add_argument("--max-frames", type=int, default=MAX_FRAMES,
                   help=f"most frames sampled per video (default {MAX_FRAMES})")
    p.add_argument("--policy", default=None, metavar="FILE",
                   help="a policy text file (safeguard_vl, llavaguard; default: the O1-O9 "
                   "LlavaGuard policy)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="renderer option, overriding the eval config's (e.g. mode=rl)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="greedy decoding budget (default: the recipe's eval budget)")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="refuse a rendered prompt longer than this (default: the recipe's "
                   "eval.max_prompt_len, 4096 or 8192)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="per-image pixel cap before patching (default: the recipe's)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"),
                   help="parameter and compute dtype (default: bfloat16)")
    p.add_argument("--step", type=int, default=None,
                   help="checkpoint step of a training workdir (default: newest)")


# ---- inputs --------------------------------------------------------------------------------
def check_arguments(args) -> RecipeDefaults:
    if args.recipe not in RECIPES:
        raise UsageError(f"unknown recipe {args.recipe!r}; choose one of {', '.join(RECIPES)}")
    d = RECIPES[args.recipe]
    if d.reads_text and args.prompt is None and not (args.recipe == "proguard" and args.image):
        raise UsageError(f"--recipe {args.recipe} needs --prompt")
    if not d.reads_text and args.prompt is not None:
        raise UsageError(f"--recipe {args.recipe} judges the image against the policy; its "
                         "prompt has no place for --prompt text")
    if not d.reads_text and not args.image and not getattr(args, "video", None):
        raise UsageError(f"--recipe {args.recipe} judges an image: pass --image PATH")
    if getattr(args, "video_fps", VIDEO_FPS) <= 0:
        raise UsageError(f"--video-fps must be > 0, got {args.video_fps}")
    if getattr(args, "max_frames", MAX_FRAMES) < 2:
        raise UsageError(f"--max-frames must be >= 2 (one temporal patch), got "
                         f"{args.max_frames}")
    if args.response is not None and not d.takes_response:
        raise UsageError(f"--recipe {args.recipe} does not judge responses; drop --response")
    if args.policy is not None and not d.takes_policy:
        raise UsageError(f"--policy applies to {' and '.join(POLICY_RECIPES)}, not "
                         f"{args.recipe}")
    for flag in ("max_new_tokens", "max_prompt_tokens"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    return d


def read_text_arguments(args) -> None:
    """Sets args.prompt / args.response from --prompt-file / --response-file."""
    for name in ("prompt", "response"):
        path = getattr(args, f"{name}_file", None)
        if path is not None:
            text = read_text(f"--{name}-file", path)
            setattr(args, name, text.removesuffix("\n").removesuffix("\r"))


def load_images(paths):
    """PIL images, fully decoded here so a bad file fails before the model loads. Each file
    first passes the checks of `guard-jax data build` (size from the header against the same
    pixel cap, then verify and decode), so a decompression bomb is refused before decoding."""
    import io

    from PIL import Image

    from data_pipeline.image_validation import ImagePolicy, ImageProblem, check_image_bytes
    images = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            check_image_bytes(data, ImagePolicy(), what="the file")
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                images.append(im.copy())
        except (OSError, ImageProblem) as e:
            raise UsageError(f"--image {path}: cannot read the image ({e})") from e
    return images


def check_videos(paths) -> None:
    """Each file opens, has a video stream within the limits and decodes its first frame, so a
    bad file fails before the model loads."""
    from data_pipeline.video_processing import VideoProblem, check_video
    for path in paths:
        try:
            check_video(path)
        except VideoProblem as e:
            raise UsageError(f"--video {path}: {e} ({e.reason})") from e


def video_inputs(args):
    """(pixel_values_videos, video_grid_thw, second_per_grid_ts) of --video, or None."""
    import numpy as np

    from data_pipeline.video_processing import VideoProblem, preprocess_videos
    if not args.video:
        return None
    parts = []
    for path in args.video:  # one at a time, so an error names the file
        try:
            parts.append(preprocess_videos(path, fps=args.video_fps, min_frames=MIN_FRAMES,
                                           max_frames=args.max_frames,
                                           min_pixels=VIDEO_MIN_PIXELS,
                                           max_pixels=VIDEO_MAX_PIXELS))
        except (VideoProblem, ValueError) as e:
            raise UsageError(f"--video {path}: {str(e).removeprefix('video 0: ')}") from e
    return tuple(np.concatenate(x) for x in zip(*parts))


def read_text(flag: str, path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{flag} {path}: not UTF-8 text ({e})") from e
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot read the file ({e.strerror or e})") from e


def read_policy(path) -> str | None:
    if path is None:
        return None
    text = read_text("--policy", path)
    if not text.strip():
        raise UsageError(f"--policy {path}: the file is empty")
    return text.strip()


def build_sample(args, image_paths):
    from data_pipeline.schema import ImageRef, Label, Sample, Task, VideoRef
    if args.recipe == "vlmguard_r1":
        task = Task.PROMPT_REWRITING
    elif args.recipe in POLICY_RECIPES:
        task = Task.POLICY_COMPLIANCE if args.policy else Task.IMAGE_SAFETY
    else:
        task = Task.RESPONSE_HARMFULNESS if args.response is not None else \
            Task.PROMPT_HARMFULNESS
    # The policy renderers insist on a gold label for their reward fields; nothing of it reaches
    # the rendered messages, and the target built from it is dropped before tokenizing.
    return Sample(id="moderate", source="command line", task=task,
                  user_text=args.prompt or "", response=args.response,
                  images=tuple(ImageRef(path=str(p)) for p in image_paths),
                  videos=tuple(VideoRef(path=str(p)) for p in getattr(args, "video", ())),
                  prompt_label=Label.UNHARMFUL, policy=read_policy(args.policy))


def prepare_inputs(args, defaults: RecipeDefaults, tokenizer, images, videos=None):
    """(input_ids [1, L], pixel_values or None, image_grid_thw or None) for the sample;
    `videos` is what `video_inputs` gives for its --video files."""
    import numpy as np

    from data_pipeline import preprocess_images
    from data_pipeline.prompts import render
    from data_pipeline.schema import SampleError
    from data_pipeline.tokenize import TokenizeError, tokenize_rendered
    from guard_jax.evaluation.runner import parse_options
    sample = build_sample(args, args.image)
    try:
        options = {**parse_options(defaults.options), **parse_options(",".join(args.option))}
        rendered = dataclasses.replace(render(args.recipe, sample, **options), target=None)
    except SampleError as e:
        raise UsageError(f"the {args.recipe} prompt cannot be built from the arguments: "
                         f"{e.message} (field {e.field!r})") from e
    except (TypeError, ValueError) as e:  # a bad --option name or value
        raise UsageError(f"--option {args.option}: {e}") from e
    pvs, grids = [], []
    for path, im in zip(args.image, images):  # one at a time, so an error names the file
        try:
            pv, grid = preprocess_images([im], min_pixels=MIN_PIXELS,
                                         max_pixels=args.max_pixels or defaults.max_pixels)
        except ValueError as e:
            raise UsageError(f"--image {path}: {e}") from e
        pvs.append(pv)
        grids.append(np.asarray(grid, np.int64).reshape(-1, 3))
    grid = np.concatenate(grids) if grids else None
    try:  # the texts are plain text: a literal <|im_start|> is characters (docs/moderate.md)
        tok = tokenize_rendered(rendered, tokenizer, grid, add_generation_prompt=True,
                                video_grids=None if videos is None else videos[1])
    except TokenizeError as e:  # a literal <|image_pad|> or <|video_pad|> in the text
        raise UsageError(f"the {args.recipe} prompt cannot be built from the arguments: {e}") \
            from e
    if not images:
        return tok.input_ids[None], None, None
    return tok.input_ids[None], np.concatenate(pvs), grid


# ---- model ---------------------------------------------------------------------------------
def resolve_model(path: str, tmp: str, *, step: int | None) -> str:
    """The HF directory to load: `path` itself, or the export of the training workdir `path`."""
    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"--model {path}: no such directory")
    if (p / "config.json").is_file():
        return str(p)
    if not any(c.is_dir() and c.name.isdigit() for c in p.iterdir()):
        raise UsageError(f"--model {path}: neither an HF directory (no config.json) nor a "
                         "training workdir (no checkpoint step folders)")
    from guard_jax.evaluation.generation import export_for_eval
    return export_for_eval(p, tmp, step=step)


def verdict_json(recipe: str, raw: str, *, judged_response: bool) -> dict:
    """The parsed verdict in the command's JSON layout (labels first, then the evidence)."""
    from guard_jax.evaluation.parsers import HARMFUL, parse
    v = parse(recipe, raw)
    out = {"recipe": recipe}
    if recipe in POLICY_RECIPES:
        rating = None if v.request is None else ("unsafe" if v.request == HARMFUL else "safe")
        out["labels"] = {"rating": rating}
        parsed = rating is not None
    elif recipe == "vlmguard_r1":
        out["labels"] = {}
        out["risk_analysis"], out["rewritten_prompt"] = v.reasoning, v.rewritten_prompt
        parsed = v.rewritten_prompt is not None
    else:
        out["labels"] = {"request": v.request, "response": v.response}
        if recipe == "guardreasoner_vl":  # the GuardReasoner family also writes Completion:
            out["labels"]["refusal"] = v.refusal
        parsed = v.request is not None and (v.response is not None or not judged_response)
    out.update(category=v.category, category_text=v.category_text,
               reasoning=v.rationale if recipe == "llavaguard" else v.reasoning,
               parsed=parsed, strict_format=v.strict, raw_output=raw)
    return out


class Moderator:
    """A loaded guard model and its tokenizer, answering one input at a time.

    Prompts are left-padded to a multiple of `prompt_bucket` tokens (masked out, as in eval's
    batches), so inputs of similar length reuse one compilation of the sampler."""

    def __init__(self, model_dir, *, dtype: str = "bfloat16", step: int | None = None,
                 prompt_bucket: int = 256):
        import guard_jax
        from guard_jax.evaluation.generation import load_tokenizer
        self.model_dir, self.prompt_bucket = str(model_dir), prompt_bucket
        with tempfile.TemporaryDirectory(prefix="guard_jax_moderate_") as tmp:
            hf_dir = resolve_model(self.model_dir, tmp, step=step)
            try:
                self.tokenizer = load_tokenizer(hf_dir)
            except (OSError, ValueError) as e:
                raise UsageError(f"--model {model_dir}: no usable tokenizer files ({e})") from e
            self.model = guard_jax.load_hf(hf_dir, dtype=dtype, compute_dtype=dtype,
                                           progress=False)

    def __call__(self, recipe: str, *, prompt: str | None = None, response: str | None = None,
                 images=(), policy: str | None = None, options=(),
                 max_new_tokens: int | None = None, max_pixels: int | None = None,
                 max_prompt_tokens: int | None = None, videos=(), video_fps: float = VIDEO_FPS,
                 max_frames: int = MAX_FRAMES) -> dict:
        """The verdict dict `guard-jax moderate` prints. `images` and `videos` are paths,
        `policy` a path to a policy text file, `options` "key=value" renderer options."""
        args = argparse.Namespace(recipe=recipe, prompt=prompt, response=response,
                                  image=list(images), policy=policy, option=list(options),
                                  max_new_tokens=max_new_tokens, max_pixels=max_pixels,
                                  max_prompt_tokens=max_prompt_tokens, video=list(videos),
                                  video_fps=video_fps, max_frames=max_frames)
        defaults = check_arguments(args)
        pil_images = load_images(args.image)
        vids = video_inputs(args)
        input_ids, pv, grid = prepare_inputs(args, defaults, self.tokenizer, pil_images, vids)
        max_new_tokens = max_new_tokens or defaults.max_new_tokens
        self.check_length(int(input_ids.shape[1]), max_new_tokens=max_new_tokens,
                          max_prompt_tokens=max_prompt_tokens or defaults.max_prompt_tokens)
        video_kw = {} if vids is None else {"videos": vids}
        out = self.generate(input_ids, pv, grid, max_new_tokens=max_new_tokens, **video_kw)
        raw = self.tokenizer.decode(out["ids"], skip_special_tokens=True)
        verdict = verdict_json(recipe, raw, judged_response=response is not None)
        verdict.update(output_tokens=len(out["ids"]), finished=out["finished"],
                       model=self.model_dir, prompt_tokens=int(input_ids.shape[1]),
                       images=len(pil_images), videos=len(args.video),
                       max_new_tokens=out["max_new_tokens"])
        return verdict

    def check_length(self, prompt_tokens: int, *, max_new_tokens: int,
                     max_prompt_tokens: int) -> None:
        """Refuses, before anything compiles, a prompt over the cap or one whose output would
        run past the model's positions."""
        if prompt_tokens > max_prompt_tokens:
            raise UsageError(f"the rendered prompt has {prompt_tokens} tokens, more than "
                             f"--max-prompt-tokens {max_prompt_tokens}; shorten the input "
                             "(text, response, policy, images) or raise --max-prompt-tokens")
        limit = self.model.config.text.max_position_embeddings
        if prompt_tokens + max_new_tokens > limit:
            raise UsageError(f"the rendered prompt has {prompt_tokens} tokens; with "
                             f"--max-new-tokens {max_new_tokens} that is "
                             f"{prompt_tokens + max_new_tokens}, more than the model's "
                             f"max_position_embeddings {limit} (--model {self.model_dir}); "
                             "shorten the input or lower --max-new-tokens")

    def generate(self, input_ids, pixel_values, image_grid_thw, *, max_new_tokens: int,
                 videos=None) -> dict:
        """Greedy ids up to (not including) the EOS, and whether an EOS ended them."""
        import numpy as np

        import guard_jax
        config = self.model.config
        length = input_ids.shape[1]
        padded = -(-length // self.prompt_bucket) * self.prompt_bucket
        ids = np.full((1, padded), config.generation_pad_id, np.int32)
        ids[:, padded - length:] = input_ids
        mask = (np.arange(padded) >= padded - length).astype(np.int32)[None]
        out = guard_jax.generate(self.model, ids, attention_mask=mask, pixel_values=pixel_values,
                                 image_grid_thw=image_grid_thw, max_new_tokens=max_new_tokens,
                                 **dict(zip(("pixel_values_videos", "video_grid_thw",
                                             "second_per_grid_ts"), videos or ())),
                                 temperature=0.0, eos_token_ids=config.generation_eos_ids,
                                 return_output=True)
        finished = bool(out.finished[0])
        # `lengths` counts the EOS when there is one; the verdict counts the text's tokens
        n = int(out.lengths[0]) - int(finished)
        return {"ids": out.tokens[0, :n].tolist(), "finished": finished,
                "max_new_tokens": max_new_tokens}


def main(args) -> int:
    """Bad input raises UsageError, which `guard_jax.cli` prints as one line (exit 2)."""
    read_text_arguments(args)  # argument and file errors before the model loads
    check_arguments(args)
    load_images(args.image)
    check_videos(args.video)
    read_policy(args.policy)
    moderator = Moderator(args.model, dtype=args.dtype, step=args.step)
    verdict = moderator(args.recipe, prompt=args.prompt, response=args.response,
                        images=args.image, policy=args.policy, options=args.option,
                        max_new_tokens=args.max_new_tokens, max_pixels=args.max_pixels,
                        max_prompt_tokens=args.max_prompt_tokens, videos=args.video,
                        video_fps=args.video_fps, max_frames=args.max_frames)
    print(json.dumps(verdict, ensure_ascii=False, indent=2))
    return 0
