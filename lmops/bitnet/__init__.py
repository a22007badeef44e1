"""BitNet b1.58 (Ma et al., arXiv 2402.17764): the ``BitLinear`` layer, whole-model conversion and
packing, checkpoints, and transformers' own BitNet format.

Typical use::

    model = AutoModelForCausalLM.from_pretrained(...)      # any causal LM: Llama, Mistral, Qwen2, BitNet
    lmops.bitnet.convert(model)                              # every nn.Linear but lm_head -> BitLinear (QAT)
    ...train...                                              # latent float weights, STE fake quantization
    lmops.bitnet.pack(model)                                 # 2-bit weights, native W2A8 kernel
    lmops.bitnet.save_pretrained(model, "out")               # config.json + model.safetensors
    model = lmops.bitnet.from_pretrained("out")              # also reads transformers BitNet checkpoints

Files: ``layer.py`` (:class:`BitLinear`), ``model.py`` (convert, unconvert, pack), ``io.py``
(save_pretrained, from_pretrained, convert_directory), ``hf.py`` (transformers' BitNet checkpoints).
"""

from .io import convert_directory, from_pretrained, save_pretrained
from .layer import BitLinear
from .model import (
    CONVERTERS,
    FORMAT_NAME,
    FORMAT_VERSION,
    PACKED_LAYOUT,
    QAT_WARNING,
    UNCONVERTERS,
    conversion_record,
    convert,
    pack,
    unconvert,
)

__all__ = [
    "CONVERTERS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PACKED_LAYOUT",
    "QAT_WARNING",
    "UNCONVERTERS",
    "BitLinear",
    "conversion_record",
    "convert",
    "convert_directory",
    "from_pretrained",
    "pack",
    "save_pretrained",
    "unconvert",
]
