"""Train the embedded demo model: a small LED on demo/synthetic.py's long-context QA, with a
byte-level BPE tokenizer trained on the same generator. Plain PyTorch loop, on the CPU unless
`--device` names another torch device (the shipped model was trained on a 2-core CPU).

    python -m ledserve.demo.train --output DIR [--steps N] [--minutes M] [--seed S] [--device cuda]

Writes a `from_pretrained` folder (model.safetensors, config, generation config, tokenizer) and
training.json: the learning curve (train loss, dev exact match) and the held-out exact match.
The encoder runs through export/graphs.py's attention (the same function as transformers' LED
self-attention, tested to < 1e-4; a step 1.3x faster at 2048 tokens, 2.8x at 4096, measured with
the formulation before the additive bias); the decoder and the loss are transformers' own.
"""

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import ByteLevelBPETokenizer
from transformers import GenerationConfig, LEDConfig, LEDForConditionalGeneration, LEDTokenizerFast

from ledserve.demo.synthetic import LENGTHS, Example, examples
from ledserve.demo.tiny import SPECIAL_TOKENS
from ledserve.export.graphs import EncoderGraph
from ledserve.manifest import INPUT_TEMPLATE

# Whether a run learns to bind a value to its person (the loss falls from ~0.33 to ~0.2 per token
# in the 100-300-token phase) depends on the initialisation and the documents drawn: with 8 heads
# and seed 0 it did in every run tried on these streams; seeds 1-3 and 4- or 16-head models did
# not within the budget (README, "The demo model").
SHAPE = dict(
    d_model=128,
    encoder_layers=3,
    decoder_layers=3,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=512,
    decoder_ffn_dim=512,
    attention_window=[32, 32, 32],  # one-sided 16: a 4000-token document spans 125 windows
    max_encoder_position_embeddings=4096,
    max_decoder_position_embeddings=64,
)
VOCAB_SIZE = 2048
TOKENIZER_SEED, DEV_SEED, HELD_OUT_SEED = 1, 5, 6
MAX_NEW_TOKENS = 32  # the longest answer is ~15 tokens


@dataclass(frozen=True)
class TrainConfig:
    output: Path
    steps: int = 6300
    minutes: float | None = None  # stop early past this wall time (the curve says where)
    batch_tokens: int = 4096  # padded input tokens per step
    lr: float = 1e-3
    warmup: int = 200
    # (fraction of the steps, document lengths): short documents first, where a fact is found
    # among few tokens and the gradient is not spread over thousands of positions.
    curriculum: tuple = (
        (0.25, (20, 100)),
        (0.15, (100, 300)),
        (0.15, (300, 600)),
        (0.25, (500, 1500)),
        (0.2, LENGTHS),
    )
    eval_every: int = 1000
    dev_examples: int = 48
    held_out_examples: int = 200
    seed: int = 0
    device: str = "cpu"  # a torch device; the shipped model is trained on the CPU

    def __post_init__(self):
        if self.steps < 1 or self.batch_tokens < 1 or self.eval_every < 1:
            raise ValueError("steps, batch_tokens and eval_every must be positive")
        if abs(sum(fraction for fraction, _ in self.curriculum) - 1) > 1e-9:
            raise ValueError("the curriculum's fractions must add up to 1")


def train_tokenizer(folder: Path) -> LEDTokenizerFast:
    """A byte-level BPE over the model's inputs and answers. With a prefix space, a name is the
    same token at the start of an answer as inside the question ("ĠRosa", not "R" "osa"), so the
    model copies it instead of learning a second spelling."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    texts = (
        text
        for e in examples(TOKENIZER_SEED, 1000)
        for text in (INPUT_TEMPLATE.format(question=e.question, context=e.context), e.answer)
    )
    bpe.train_from_iterator(texts, vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe.save_model(str(folder))
    tokenizer = LEDTokenizerFast(vocab_file=vocab, merges_file=merges, add_prefix_space=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def encode(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """input ids and global attention mask: the template, global on <s> and the question (as
    engine/prompt.py builds them for a served request; a test checks they agree)."""
    text = INPUT_TEMPLATE.format(question=example.question, context=example.context)
    ids = tokenizer(text)["input_ids"]
    width = _global_width(tokenizer, example.question)
    return ids, [int(i < width) for i in range(len(ids))]


def _global_width(tokenizer, question: str) -> int:
    """<s> and the template's tokens up to the end of the question: the global ones."""
    prefix = INPUT_TEMPLATE.split("{question}")[0] + question
    return 1 + len(tokenizer(prefix, add_special_tokens=False)["input_ids"])


def fact_distance(tokenizer, example: Example) -> int:
    """Tokens between the question's last global token and the start of the needed fact."""
    text = INPUT_TEMPLATE.format(question=example.question, context=example.context)
    start = text.index(" context: ") + len(" context: ") + example.fact_start
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    fact = next(i for i, (_, end) in enumerate(offsets) if end > start)
    return fact - _global_width(tokenizer, example.question)


def collate(tokenizer, batch: list[Example]) -> dict[str, torch.Tensor]:
    encoded = [encode(tokenizer, e) for e in batch]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)  # [batch, seq]
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    global_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, glob) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        global_mask[row, : len(ids)] = torch.tensor(glob)
    labels = tokenizer([e.answer for e in batch], padding=True, return_tensors="pt")
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        global_attention_mask=global_mask,
        labels=labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100),
    )


def stream_seed(seed: int, stage: int) -> int:
    """The generator seed of a curriculum stage's documents. Dev and held-out documents come from
    seeds no stage of seeds 0-9 uses (5 and 6; an earlier version evaluated on seed 4, which is
    the last stage's own stream: it was scoring training documents)."""
    return seed * 100 + stage


def training_batches(tokenizer, seed: int, lengths, batch_tokens: int, pool: int = 64):
    """Endless batches: pools of examples sorted by length, cut to `batch_tokens` padded tokens."""
    rng, stream = random.Random(seed), examples(seed, 10**9, lengths)
    while True:
        items = sorted(
            ((len(encode(tokenizer, e)[0]), e) for e in (next(stream) for _ in range(pool))),
            key=lambda item: item[0],
        )
        batches = cut(items, batch_tokens)
        rng.shuffle(batches)
        yield from batches


def cut(items: list[tuple[int, Example]], batch_tokens: int) -> list[list[Example]]:
    """(length, example) in order of length -> consecutive batches of at most `batch_tokens`
    padded tokens (an example longer than that alone)."""
    batches, current = [], []
    for length, example in items:
        if current and length * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(example)
    batches.append(current)
    return batches


def generate(model, tokenizer, batch: list[Example]) -> torch.Tensor:
    """transformers `generate`, greedy (the reference the engine is compared with):
    [batch, tokens], decoder start token first, padding after EOS."""
    inputs = collate(tokenizer, batch)
    inputs.pop("labels")
    inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False)


def exact_match(answers: list[str], predictions: list[str]) -> float:
    return sum(a.strip() == p.strip() for a, p in zip(answers, predictions, strict=True)) / len(
        answers
    )


def evaluate(model, tokenizer, items: list[Example], batch: int = 8) -> dict:
    """Exact match overall and on facts more than one attention window from the question."""
    model.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i].context))
    predictions = [""] * len(items)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        tokens = generate(model, tokenizer, [items[i] for i in chunk])
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        for i, text in zip(chunk, texts, strict=True):
            predictions[i] = text
    window = max(model.config.attention_window)
    far = [i for i, e in enumerate(items) if fact_distance(tokenizer, e) > window]
    answers = [e.answer for e in items]
    return {
        "exact_match": exact_match(answers, predictions),
        "far_exact_match": exact_match([answers[i] for i in far], [predictions[i] for i in far]),
        "far_examples": len(far),
        "examples": len(items),
        "predictions": predictions,
    }


def build_model(tokenizer, seed: int) -> LEDForConditionalGeneration:
    config = LEDConfig(
        **SHAPE,
        vocab_size=len(tokenizer),
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LEDForConditionalGeneration(config)
    with torch.no_grad():  # sinusoids at the random init's scale: offsets are learnt sooner
        for table in (model.led.encoder.embed_positions, model.led.decoder.embed_positions):
            table.weight.copy_(sinusoids(*table.weight.shape) * 0.02 * math.sqrt(2))
    return model


def sinusoids(positions: int, width: int) -> torch.Tensor:
    """[positions, width]: the Transformer's sin/cos position code (a start for learnt ones)."""
    angle = torch.arange(positions)[:, None] / 10000 ** (torch.arange(0, width, 2) / width)
    table = torch.zeros(positions, width)
    table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return table


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth at `cfg.steps`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / (cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train(cfg: TrainConfig) -> dict:
    transformers.logging.set_verbosity_error()  # not one "padded to the window" line per batch
    cfg.output.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(cfg.output)
    model = build_model(tokenizer, cfg.seed).to(cfg.device)
    encoder = EncoderGraph(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    dev = list(examples(DEV_SEED, cfg.dev_examples))
    stages, end = [], 0.0
    for i, (fraction, lengths) in enumerate(cfg.curriculum):
        end += fraction
        stream = training_batches(tokenizer, stream_seed(cfg.seed, i), lengths, cfg.batch_tokens)
        stages.append((round(end * cfg.steps), stream))
    curve, losses, seen, start = [], [], 0, time.monotonic()
    print(f"[train] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{cfg.steps} steps", file=sys.stderr)  # fmt: skip
    for step in range(cfg.steps):
        model.train()
        batch = collate(tokenizer, next(next(s for until, s in stages if step < until)))
        batch = {name: tensor.to(cfg.device) for name, tensor in batch.items()}
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        mask = batch["attention_mask"]
        hidden = encoder.hidden_states(batch["input_ids"], mask, batch["global_attention_mask"])
        loss = model(encoder_outputs=(hidden,), attention_mask=mask, labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        seen += len(batch["input_ids"])
        elapsed = (time.monotonic() - start) / 60
        last = step == cfg.steps - 1 or (cfg.minutes is not None and elapsed > cfg.minutes)
        if (step + 1) % cfg.eval_every == 0 or last:
            point = {
                "step": step + 1,
                "examples": seen,
                "minutes": round(elapsed, 2),
                "train_loss": round(sum(losses) / len(losses), 4),
                "dev_exact_match": evaluate(model, tokenizer, dev)["exact_match"],
            }
            curve.append(point)
            losses = []
            print(f"[train] {json.dumps(point)}", file=sys.stderr)
        if last:
            break
    minutes = (time.monotonic() - start) / 60
    model.eval()
    model.save_pretrained(str(cfg.output))  # safetensors from any device
    generation = GenerationConfig.from_model_config(model.config)
    generation.max_new_tokens = MAX_NEW_TOKENS
    generation.max_length = None
    generation.save_pretrained(str(cfg.output))
    held_out = evaluate(model, tokenizer, list(examples(HELD_OUT_SEED, cfg.held_out_examples)))
    report = {
        "config": {**asdict(cfg), "output": str(cfg.output), "shape": SHAPE},
        "train_minutes": round(minutes, 2),
        "threads": torch.get_num_threads(),
        "curve": curve,
        "held_out": {k: v for k, v in held_out.items() if k != "predictions"},
    }
    (cfg.output / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledserve.demo.train", description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    defaults = TrainConfig(output=Path())
    for name in ("steps", "batch_tokens", "eval_every", "seed", "held_out_examples"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--minutes", type=float, help="stop early past this wall time")
    parser.add_argument("--device", default=defaults.device, help="a torch device, e.g. cuda")
    args = vars(parser.parse_args(argv))
    report = train(TrainConfig(**args))
    print(json.dumps({k: report[k] for k in ("train_minutes", "held_out")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
