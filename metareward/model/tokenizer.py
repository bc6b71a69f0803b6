"""Tokenizers: transformers' AutoTokenizer from a local directory, chat formatting with its chat template,
and the byte-level tokenizer of the built-in `tiny-random` model, made in code."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError

NO_LIMIT = int(1e30)  # transformers' "no maximum" value
TINY_SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def load_tokenizer(path: str | Path, chat_template: str | Path | None = None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises many types for a broken or absent tokenizer
        raise UserError(f"cannot load the tokenizer from {path}: {str(e).splitlines()[0]}") from None
    if chat_template is not None:
        set_chat_template(tok, chat_template)
    tok.model_max_length = NO_LIMIT  # lengths are checked against the model's context by the engine/trainer
    return tok


def set_chat_template(tok, file: str | Path) -> None:
    try:
        tok.chat_template = Path(file).read_text()
    except OSError as e:
        raise UserError(f"cannot read chat template {file}: {e.strerror}") from None


def chat_ids(tok, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation formatted with the tokenizer's chat template (its text already holds
    any BOS, so no special tokens are added again)."""
    if not getattr(tok, "chat_template", None):
        raise UserError("the tokenizer has no chat template: pass --chat-template FILE (a Jinja template), "
                        "or --raw to tokenize prompts as plain text")
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja2 errors, raise_exception() inside templates
        raise UserError(f"the chat template failed: {e}") from None
    return tok.encode(text, add_special_tokens=False)


def _bytes_to_unicode() -> list[str]:
    # GPT-2's map from the 256 byte values to printable characters, the alphabet of ByteLevel BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    order = sorted(range(256), key=lambda i: bs[i])
    return [chr(cs[i]) for i in order]


def tiny_tokenizer():
    """Byte-level: ids 0-255 are the bytes, then the special tokens. Any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(_bytes_to_unicode())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(TINY_SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", chat_template=TINY_CHAT_TEMPLATE,
                                   model_max_length=NO_LIMIT)
