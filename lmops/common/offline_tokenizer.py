"""A ``transformers`` tokenizer that needs no download: byte-level BPE with the 256 byte symbols and no
merges (one token per UTF-8 byte), plus special tokens. The offline demos and the tests use it to
build tiny models from configs; users load their real tokenizer with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

__all__ = ["byte_level_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "[CLS]", "[SEP]", "[MASK]")


def byte_level_tokenizer(*, padding_side: str = "left", model_max_length: int = 2048):
    """A ``PreTrainedTokenizerFast`` with ids 0-6 for ``<pad> <s> </s> <unk> [CLS] [SEP] [MASK]`` and
    ids 7-262 for the 256 bytes (``len(tok) == 263``). Encoding adds no special tokens by default, so a
    causal LM's prompt and continuation tokenize exactly as their concatenation does at a byte
    boundary; ``tok("…", add_special_tokens=True)`` is the same (use ``tok.cls_token_id`` etc. for an
    encoder's [CLS] pooling, as :func:`lmops.methods` retrievers do).

    Args:
        padding_side: ``"left"`` for decoder-only generation (default), ``"right"`` for encoders.
        model_max_length: the tokenizer's ``model_max_length``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins byte-level BPE uses for raw bytes
    byte_of = {c: i for i, c in enumerate(sorted(alphabet, key=lambda c: _byte_value(c)))}
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch, b in byte_of.items():
        vocab[ch] = len(SPECIAL_TOKENS) + b
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        padding_side=padding_side,
        model_max_length=model_max_length,
    )
    return tok


def _byte_value(ch: str) -> int:
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + k in order
    from tokenizers.pre_tokenizers import ByteLevel  # noqa: F401  (same table tokenizers uses)

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    code = ord(ch)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]
