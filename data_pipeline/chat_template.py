"""The official Qwen2.5-VL chat template, verbatim.

Whitespace is significant: every newline below is part of the rendered prompt. The hub ships it as
`chat_template.json`; a tokenizer saved by transformers 5.x writes it as `chat_template.jinja`.
"""

from __future__ import annotations

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# What the template inserts when the messages start without a system turn.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def ensure_chat_template(tokenizer, *, force: bool = False):
    """Give `tokenizer` the Qwen2.5-VL template when it has none (or always, with `force`).

    A tokenizer that already carries a template keeps it unless `force`: a checkpoint may ship its
    own (e.g. a fine-tune with a modified template), and silently replacing it would change ids.
    """
    if force or not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
