"""Random-weight LED checkpoints built locally (no hub): for tests, the demo and benchmarks.

A checkpoint is a real `LEDForConditionalGeneration` saved with `save_pretrained` next to a
byte-level BPE tokenizer trained here, so it loads through the same `from_pretrained` path as a
hub model.
"""

import random
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GenerationConfig, LEDConfig, LEDForConditionalGeneration, LEDTokenizerFast

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


def train_tokenizer(folder: Path, vocab_size: int = 400) -> LEDTokenizerFast:
    """A byte-level BPE tokenizer with LED's special tokens, saved as LEDTokenizerFast files."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(2000), vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe.save_model(str(folder))
    tokenizer = LEDTokenizerFast(vocab_file=vocab, merges_file=merges)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_random_led(
    folder: Path, seed: int = 0, weight_std: float = 0.15, eos_bias: float = 0.0, **overrides
) -> LEDForConditionalGeneration:
    """Save a random LED (TINY shape unless overridden) and a local tokenizer into `folder`.

    Matrices are drawn with a large std (not LED's 0.02) so that attention is peaked and a masking
    error changes the outputs visibly; layer norms scale by ~1 so that outputs depend on the input.
    `eos_bias` is added to EOS's logit, so that generation ends at varied lengths.
    """
    folder = Path(folder)
    tokenizer = train_tokenizer(folder)
    shape = {**TINY, "vocab_size": len(tokenizer), **overrides}
    config = LEDConfig(**shape, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    model = LEDForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.05)
            else:
                parameter.normal_(0.0, weight_std)
        model.final_logits_bias[0, config.eos_token_id] = eos_bias
    model.save_pretrained(str(folder))
    GenerationConfig.from_model_config(config).save_pretrained(str(folder))
    return model
