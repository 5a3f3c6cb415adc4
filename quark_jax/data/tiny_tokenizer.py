"""The recipe of the bundled checkpoints' tokenizer: a 256-id BPE trained with ``tokenizers`` on a few sentences.

The tiny Llama has ``vocab_size`` 256, too few for a byte-level vocabulary (256 bytes alone), so the tokenizer is
SentencePiece-style: a ``Metaspace`` pre-tokenizer (spaces become ``▁``), BPE over printable ASCII and newline
(anything else is ``<unk>``), and ids 0-4 for ``<unk>``, ``<s>`` (BOS, id 1 as in config.json), ``</s>`` (EOS,
id 2), ``<|im_start|>`` and ``<|im_end|>`` (the ChatML chat template's turn markers). The post-processor adds BOS.
The model's weights are random, so what it says is noise -- but it is text.

Regenerate the shipped files (``tokenizer.json``, ``tokenizer_config.json`` in each bundled directory) with
``python -m quark_jax.data.tiny_tokenizer``; tests/test_tokenizer.py checks that the shipped vocabulary and merges
are what this recipe trains.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

SENTENCES = [
    "Once upon a time, a tiny model learned to speak in four bits.",
    "Quark quantizes the weights and activations of large language models.",
    "The quick brown fox jumps over the lazy dog.",
    "JAX compiles the prefill and the decode step once, then runs them fast.",
    "Hello world! How are you today? I am fine, thank you.",
    "FP8, INT8 and MXFP4 scales keep the numbers close to the float model.",
    "What is the capital of France? The capital of France is Paris.",
    "Please write a short poem about the sea and the stars.",
]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 256
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOKENIZER_CONFIG = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "chat_template": CHAT_TEMPLATE,
    "model_max_length": 128,
    "tokenizer_class": "PreTrainedTokenizerFast",
}


def train():
    """A fresh ``tokenizers.Tokenizer`` trained by the recipe (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    alphabet = sorted(set(string.printable[:95]) - {" "} | {"\n", "\u2581"})
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet,
                                  limit_alphabet=len(alphabet), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def write(directory: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
    directory = Path(directory)
    train().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")


if __name__ == "__main__":
    from quark_jax.data import BUNDLED, FLOAT_CHECKPOINT

    for d in [*BUNDLED.values(), FLOAT_CHECKPOINT]:
        write(d)
        print("wrote", d)
