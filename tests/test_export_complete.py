"""An export is servable as it is: from a source without any processor file (a tokenizer folder
only, as the demo, random inits and imported checkpoints have), it holds the image and video
processor configs and the chat template; `AutoProcessor` loads it and gives the inputs our
pipeline gives; transformers' greedy `generate` on it gives our greedy tokens."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.utils import PushToHubMixin

import guard_jax
import hf_reference as H
from data_pipeline import preprocess_images
from data_pipeline.chat_template import CHAT_TEMPLATE
from data_pipeline.local_files import load_tokenizer
from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir
from data_pipeline.tokenize import render_and_tokenize
from guard_jax.models.qwen2_5_vl.config import tiny_qwen

N = 8  # new tokens
PROCESSOR_FILES = {"preprocessor_config.json", "video_preprocessor_config.json",
                   "chat_template.jinja"}


class _VideoProcessorStandIn(PushToHubMixin):
    """What the loaded processor holds for videos when torchvision is missing (see
    `load_processor`): the parsed video_preprocessor_config.json."""

    def __init__(self, config: dict):
        self.config = config

    def to_dict(self) -> dict:
        return dict(self.config)


def load_processor(path):
    """`AutoProcessor.from_pretrained(path, local_files_only=True)`.

    transformers 5 builds a Qwen2.5-VL processor from three parts, and its video processor
    needs torchvision, whose PyPI wheels are CUDA builds that do not import next to the CPU
    torch the tests use. Without torchvision only that one part is replaced: the stand-in
    reads the export's video_preprocessor_config.json (which must be there), and everything
    else (tokenizer, image processor, chat template, processor class) loads for real."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available
    if is_torchvision_available():
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    from transformers import ProcessorMixin
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    def video(folder, **kwargs):
        with open(f"{folder}/video_preprocessor_config.json", encoding="utf-8") as f:
            return _VideoProcessorStandIn(json.load(f))

    real_check = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, arg):
        if isinstance(arg, _VideoProcessorStandIn):
            return type(arg)
        return real_check(self, name, arg)

    with mock.patch.object(AutoVideoProcessor, "from_pretrained", video), \
            mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", check):
        return AutoProcessor.from_pretrained(path, local_files_only=True)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny random model with the real Qwen vocabulary, exported with a tokenizer folder
    that has no processor file and no chat-template file."""
    root = tmp_path_factory.mktemp("complete")
    tok = write_qwen2_5_vl_tokenizer_dir(root / "tok")
    assert not PROCESSOR_FILES & {p.name for p in tok.iterdir()}
    model = guard_jax.init_model(tiny_qwen(), seed=3)
    out = guard_jax.save_hf(model, root / "hf", assets_from=str(tok), progress=False)
    return model, out


def _image():
    # 70 x 100: resized to 56 x 112 (multiples of 28), so the bicubic resize runs too
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8))


MESSAGES = [{"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": "Is this image safe?"}]}]


def test_export_holds_processor_files(export):
    _, out = export
    names = {p.name for p in out.iterdir()}
    assert PROCESSOR_FILES <= names, sorted(names)
    c = tiny_qwen()
    image = json.loads((out / "preprocessor_config.json").read_text())
    assert image["image_processor_type"] == "Qwen2VLImageProcessor"
    assert image["processor_class"] == "Qwen2_5_VLProcessor"
    assert (image["patch_size"], image["temporal_patch_size"], image["merge_size"]) == (
        c.vision.patch_size, c.vision.temporal_patch_size, c.vision.spatial_merge_size)
    assert (image["min_pixels"], image["max_pixels"]) == (3136, 1003520)
    assert image["size"] == {"shortest_edge": 3136, "longest_edge": 1003520}
    video = json.loads((out / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert video["temporal_patch_size"] == c.vision.temporal_patch_size
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    marker = json.loads((out / "guard_jax_export.json").read_text())
    assert PROCESSOR_FILES <= set(marker["files"])


def test_auto_processor_gives_our_inputs_and_transformers_our_tokens(export):
    model, out = export
    processor = load_processor(out)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    image = _image()

    # our pipeline: the export's tokenizer, data_pipeline's image processing and rendering
    pv, grid = preprocess_images([image], min_pixels=3136, max_pixels=1003520)
    ours = render_and_tokenize(MESSAGES, None, load_tokenizer(out), grid,
                               add_generation_prompt=True)
    assert grid.tolist() == [[1, 4, 8]]

    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    got = processor(text=[text], images=[image], return_tensors="np")
    np.testing.assert_array_equal(got["input_ids"][0], ours.input_ids)
    np.testing.assert_array_equal(got["image_grid_thw"], grid)
    np.testing.assert_array_equal(got["pixel_values"], pv)

    # transformers' greedy generate on the export vs guard_jax.generate
    hf = H.load_hf_model(out)
    ids = torch.as_tensor(got["input_ids"], dtype=torch.long)
    with torch.no_grad():
        seq = hf.generate(input_ids=ids, attention_mask=torch.as_tensor(got["attention_mask"]),
                          pixel_values=torch.as_tensor(got["pixel_values"]),
                          image_grid_thw=torch.as_tensor(got["image_grid_thw"]),
                          mm_token_type_ids=torch.as_tensor(got["mm_token_type_ids"]),
                          max_new_tokens=N, do_sample=False)
    want = seq[0, ids.shape[1]:].numpy()
    mine = guard_jax.generate(model, ours.input_ids[None], attention_mask=ours.attention_mask[None],
                              pixel_values=pv, image_grid_thw=grid, max_new_tokens=N,
                              eos_token_ids=model.config.generation_eos_ids)[0]
    print(f"\ntransformers greedy: {want.tolist()}\nguard_jax greedy:    {mine.tolist()}")
    assert len(set(want.tolist())) > 1  # not a degenerate repeat of one token
    np.testing.assert_array_equal(mine[:len(want)], want)
    assert len(want) == N or want[-1] in model.config.generation_eos_ids


def test_checkpoint_export_resizes_as_the_run(export, tmp_path):
    """`guard-jax export` of a checkpoint whose source has no processor file: the image
    processor config carries the run's data.min_pixels / data.max_pixels."""
    from guard_jax.training.hf_convert import export_checkpoint, import_hf
    _, hf = export
    src = tmp_path / "src"  # the model and tokenizer without any processor file
    src.mkdir()
    for p in hf.iterdir():
        if p.name not in PROCESSOR_FILES | {"guard_jax_export.json"}:
            (src / p.name).symlink_to(p)
    work = import_hf(src, tmp_path / "work", config_path="configs/tiny_sft.py",
                     overrides=["--config.data.min_pixels=6272", "--config.data.max_pixels=200704"])
    out = export_checkpoint(work, tmp_path / "out", progress=False)
    assert PROCESSOR_FILES <= {p.name for p in out.iterdir()}
    image = json.loads((out / "preprocessor_config.json").read_text())
    assert (image["min_pixels"], image["max_pixels"]) == (6272, 200704)
    assert image["size"] == {"shortest_edge": 6272, "longest_edge": 200704}
    assert load_processor(out).image_processor.size.longest_edge == 200704
