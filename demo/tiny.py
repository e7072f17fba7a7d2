"""Random-weight LED checkpoints built locally (no hub): for tests, the demo and benchmarks.

A checkpoint is a real `LEDForConditionalGeneration` saved with `save_pretrained` next to a
byte-level BPE tokenizer trained here, so it loads through the same `from_pretrained` path as a
hub model.
"""

import random
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    GenerationConfig,
    LEDConfig,
    LEDForConditionalGeneration,
    LEDTokenizerFast,
    LongformerConfig,
    LongformerForQuestionAnswering,
    LongformerTokenizerFast,
)

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, LED's own layout

_WORDS = (
    "the a river city report engine window token answer question context model long document "
    "value seven north energy market paper result data study test river mountain garden über "
    "café naïve 東京 データ 🙂 price year first last because however which where when"
).split()

TINY = dict(
    d_model=32,
    encoder_layers=3,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    attention_window=[12, 4, 6],  # one-sided 6, 2, 3: odd, and different per layer
    max_encoder_position_embeddings=1024,
    max_decoder_position_embeddings=64,
)

# The shape of allenai/led-base-16384 (random weights).
BASE = dict(
    d_model=768,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=12,
    decoder_attention_heads=12,
    encoder_ffn_dim=3072,
    decoder_ffn_dim=3072,
    attention_window=[1024] * 6,
    max_encoder_position_embeddings=16384,
    max_decoder_position_embeddings=1024,
    vocab_size=50265,
)


def corpus(lines: int, seed: int = 0) -> list[str]:
    """Deterministic filler sentences (with accents, CJK and emoji) to train a tokenizer on."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(_WORDS, k=rng.randint(4, 16))) + "." for _ in range(lines)]


def train_tokenizer(folder: Path, vocab_size: int = 400, kind=LEDTokenizerFast, **options):
    """A byte-level BPE tokenizer with LED's (RoBERTa's) special tokens, saved as `kind`'s files
    (LEDTokenizerFast, LongformerTokenizerFast)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(2000), vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe.save_model(str(folder))
    tokenizer = kind(vocab_file=vocab, merges_file=merges, **options)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _randomize(model, weight_std: float):
    """Large-std matrices (not the models' 0.02): attention is peaked, so that a masking error
    changes the outputs visibly; layer norms scale by ~1, so that outputs depend on the input."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layernorm" in name.lower() or "layer_norm" in name:
                parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.05)
            else:
                parameter.normal_(0.0, weight_std)


def build_random_led(
    folder: Path, seed: int = 0, weight_std: float = 0.15, eos_bias: float = 0.0, **overrides
) -> LEDForConditionalGeneration:
    """Save a random LED (TINY shape unless overridden) and a local tokenizer into `folder`.

    Weights as `_randomize` draws them. `eos_bias` is added to EOS's logit, so that generation
    ends at varied lengths.
    """
    folder = Path(folder)
    tokenizer = train_tokenizer(folder)
    shape = {**TINY, "vocab_size": len(tokenizer), **overrides}
    config = LEDConfig(**shape, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    model = LEDForConditionalGeneration(config).eval()
    _randomize(model, weight_std)
    with torch.no_grad():
        model.final_logits_bias[0, config.eos_token_id] = eos_bias
    model.save_pretrained(str(folder))
    GenerationConfig.from_model_config(config).save_pretrained(str(folder))
    return model


# A small Longformer with a span head: odd one-sided windows (6, 2, 3), different per layer
# (transformers needs every window to divide the largest one).
TINY_QA = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    attention_window=[12, 4, 6],
    max_position_embeddings=514,  # 512 tokens after RoBERTa's two reserved positions
)

# The shape of a Longformer-base QA model such as mrm8488/longformer-base-4096-finetuned-squadv2.
BASE_QA = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    attention_window=[512] * 12,
    max_position_embeddings=4098,
    vocab_size=50265,
)


def build_random_longformer_qa(
    folder: Path, seed: int = 0, weight_std: float = 0.15, **overrides
) -> LongformerForQuestionAnswering:
    """Save a random `LongformerForQuestionAnswering` (TINY_QA shape unless overridden) and a
    local tokenizer into `folder`; weights as `_randomize` draws them."""
    folder = Path(folder)
    shape = {**TINY_QA, **overrides}
    tokenizer = train_tokenizer(
        folder, kind=LongformerTokenizerFast, model_max_length=shape["max_position_embeddings"] - 2
    )
    shape.setdefault("vocab_size", len(tokenizer))
    config = LongformerConfig(
        **shape, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=1,
        architectures=["LongformerForQuestionAnswering"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LongformerForQuestionAnswering(config).eval()
    _randomize(model, weight_std)
    model.save_pretrained(str(folder))
    return model
