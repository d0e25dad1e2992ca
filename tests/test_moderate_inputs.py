"""`guard-jax moderate` input checks on the tiny random Qwen2.5-VL (max_position_embeddings
4096, real tokenizer): --prompt-file / --response-file, the rendered length against
--max-prompt-tokens and the model's positions (checked before anything generates), and images
through `guard-jax data build`'s checks (a decompression bomb exits 2 before it is decoded)."""

from __future__ import annotations

import json
import zlib

import pytest
from PIL import Image

from guard_jax.cli import main as cli_main
from guard_jax.errors import InputError
from guard_jax.moderate_cli import Moderator, UsageError
from tiny_qwen_dir import write_tiny_qwen_hf_dir

MAX_NEW = 4
LONG = "word " * 5000  # 5172 prompt tokens with the guardreasoner_vl prompt around it


def _png(width: int, height: int) -> bytes:
    """A valid all-black grayscale PNG, built from zlib-compressed rows (no pixel buffer)."""
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("moderate_inputs")
    write_tiny_qwen_hf_dir(root)
    (root / "bomb.png").write_bytes(_png(10000, 10000))  # 100 megapixels, above PIL's default
    (root / "prompt.txt").write_text("how do I bake bread\n", encoding="utf-8")
    (root / "response.txt").write_text("Mix flour, water and yeast; bake it.", encoding="utf-8")
    (root / "long.txt").write_text(LONG, encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return root


@pytest.fixture(scope="module")
def moderator(files):
    return Moderator(files / "hf", dtype="float32")


def _moderate(files, *extra):
    return cli_main(["moderate", "--model", str(files / "hf"), "--recipe", "guardreasoner_vl",
                     "--dtype", "float32", *map(str, extra)])


def test_usage_error_is_the_project_input_error():
    assert issubclass(UsageError, InputError)


def test_bomb_image_exits_2_before_decoding(files, capsys):
    bomb = files / "bomb.png"
    with pytest.warns(Image.DecompressionBombWarning), Image.open(bomb) as im:  # decodable
        assert im.size == (10000, 10000)
    assert _moderate(files, "--prompt", "x", "--image", bomb, "--max-new-tokens", 1) == 2
    out = capsys.readouterr()
    assert out.out == "" and "Traceback" not in out.err
    (line,) = out.err.strip().splitlines()
    assert line.startswith(f"guard-jax moderate: --image {bomb}: cannot read the image")
    assert "100000000 pixels" in line and "cap 89478485 pixels" in line


def test_prompt_and_response_files_read_as_the_arguments(files, moderator, capsys):
    assert _moderate(files, "--prompt-file", files / "prompt.txt", "--response-file",
                     files / "response.txt", "--max-new-tokens", MAX_NEW) == 0
    got = json.loads(capsys.readouterr().out)
    want = moderator("guardreasoner_vl", prompt="how do I bake bread",
                     response="Mix flour, water and yeast; bake it.", max_new_tokens=MAX_NEW)
    assert got["prompt_tokens"] == want["prompt_tokens"]  # the final newline is dropped
    assert got["raw_output"] == want["raw_output"]


@pytest.mark.parametrize("extra, message", [
    (["--prompt-file", "{root}/absent.txt"], "--prompt-file {root}/absent.txt: cannot read the "
     "file (No such file or directory)"),
    (["--prompt", "x", "--response-file", "{root}/latin1.txt"],
     "--response-file {root}/latin1.txt: not UTF-8 text"),
    (["--prompt-file", "{root}/long.txt", "--max-prompt-tokens", "0"],
     "--max-prompt-tokens must be >= 1, got 0"),
])
def test_text_file_errors(files, capsys, extra, message):
    root = str(files)
    assert _moderate(files, *[a.format(root=root) for a in extra]) == 2
    out = capsys.readouterr()
    (line,) = out.err.strip().splitlines()
    assert out.out == "" and line.startswith(f"guard-jax moderate: {message.format(root=root)}")


@pytest.mark.parametrize("text, file", [("--prompt", "--prompt-file"),
                                        ("--response", "--response-file")])
def test_text_and_file_are_exclusive(files, capsys, text, file):
    with pytest.raises(SystemExit) as e:
        _moderate(files, "--prompt", "x", text, "y", file, files / "prompt.txt")
    assert e.value.code == 2
    assert f"argument {file}: not allowed with argument {text}" in capsys.readouterr().err


def test_prompt_over_max_prompt_tokens_exits_2(files, capsys):
    assert _moderate(files, "--prompt-file", files / "long.txt", "--max-prompt-tokens", 100) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == ("guard-jax moderate: the rendered prompt has 5172 tokens, more than "
                       "--max-prompt-tokens 100; shorten the input (text, response, policy, "
                       "images) or raise --max-prompt-tokens\n")


def _no_generation(moderator, monkeypatch):
    calls = []

    def fake(input_ids, pv, grid, *, max_new_tokens):
        calls.append(int(input_ids.shape[1]))
        return {"ids": [], "finished": True, "max_new_tokens": max_new_tokens}
    monkeypatch.setattr(moderator, "generate", fake)
    return calls


def test_context_length_checked_before_generation(moderator, monkeypatch):
    calls = _no_generation(moderator, monkeypatch)
    # 5172 tokens is under guardreasoner_vl's default cap (8192) but past the model's 4096
    with pytest.raises(UsageError, match=r"the rendered prompt has 5172 tokens; with "
                       r"--max-new-tokens 4 that is 5176, more than the model's "
                       r"max_position_embeddings 4096"):
        moderator("guardreasoner_vl", prompt=LONG, max_new_tokens=MAX_NEW)
    assert calls == []


def test_context_length_counts_max_new_tokens(moderator, monkeypatch):
    calls = _no_generation(moderator, monkeypatch)
    n = moderator("guardreasoner_vl", prompt="how do I bake bread", max_new_tokens=1)[
        "prompt_tokens"]
    assert calls == [n]
    fits = moderator("guardreasoner_vl", prompt="how do I bake bread",
                     max_new_tokens=4096 - n)  # exactly the model's positions: allowed
    assert fits["max_new_tokens"] == 4096 - n and len(calls) == 2
    with pytest.raises(UsageError, match=f"with --max-new-tokens {4097 - n} that is 4097"):
        moderator("guardreasoner_vl", prompt="how do I bake bread", max_new_tokens=4097 - n)
    assert len(calls) == 2
