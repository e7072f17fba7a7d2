"""Validation of exported graphs against transformers on fresh random inputs.

The encoder (and an extractive model's span graph) is checked at lengths around the attention
window (below, at, across its multiples), in padded batches and under several global-attention
patterns; the decoder over teacher-forced steps with its KV cache. Errors are reported per output:
max abs, max abs relative to the largest reference magnitude, and root-mean-square error relative
to the reference's; with them the share of decoder steps whose argmax equals transformers'. fp32
must match within an absolute 1e-4, fp16 within 1e-2 relative, int8 within 0.25 RMS-relative: on
the tests' tiny random models (d_model 24-32, one scale per weight tensor) int8 reached 0.14 in 24
runs, while every encoder weight scale off by 2x gave 2 to 3. int8 answer quality is measured on
the trained demo model (benchmarks/quality.py, tests/test_demo_model.py), not here.
"""

import numpy as np
import onnxruntime as ort
import torch

from ledserve.export.graphs import (
    CROSS_KEY,
    CROSS_VALUE,
    PAST_KEY,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_VALUE,
)
from ledserve.manifest import Check, Validation
from ledserve.providers import PROVIDERS, provider_name

TOLERANCES = {"fp32": ("max_abs", 1e-4), "fp16": ("max_rel", 1e-2), "int8": ("rms_rel", 0.25)}
DECODER_STEPS = 20


def session(path, device: str = "cpu") -> ort.InferenceSession:
    """An ONNX Runtime session on one provider; a missing provider is an error, not a fallback."""
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError("CUDA execution provider is not available in this onnxruntime build")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    created = ort.InferenceSession(str(path), options, providers=PROVIDERS[device])
    if created.get_providers()[0] != provider_name(device):
        raise RuntimeError(f"onnxruntime could not start {provider_name(device)}")
    return created


def random_encoder_inputs(rng, vocab, lengths, global_pattern):
    """Token ids and masks for len(lengths) rows, right-padded to max(lengths).

    global_pattern: "none", "first", "question" (a prefix of the row) or "random" positions.
    """
    batch, seq = len(lengths), max(lengths)
    input_ids = rng.integers(5, vocab, (batch, seq))
    attention_mask = np.zeros((batch, seq), np.int64)
    global_attention_mask = np.zeros((batch, seq), np.int64)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
        input_ids[row, length:] = 1  # LED's pad id, as a tokenizer would pad
        if global_pattern == "first":
            global_attention_mask[row, 0] = 1
        elif global_pattern == "question":
            global_attention_mask[row, : min(length, int(rng.integers(1, 12)))] = 1
        elif global_pattern == "random":
            count = int(rng.integers(1, min(length, 6) + 1))
            global_attention_mask[row, rng.choice(length, count, replace=False)] = 1
    return {
        "input_ids": input_ids.astype(np.int64),
        "attention_mask": attention_mask,
        "global_attention_mask": global_attention_mask,
    }


def encoder_cases(config, rng) -> list[tuple[str, dict]]:
    """Lengths 1, w-1, w+1 and 3w+5, batches with padded rows, for the largest window w; capped at
    the longest input transformers accepts (it pads to a multiple of w within the positions)."""
    window = max(config.attention_window)
    if config.model_type == "longformer":  # RoBERTa positions: two reserved
        positions = config.max_position_embeddings - config.pad_token_id - 1
    else:
        positions = config.max_encoder_position_embeddings
    limit = positions - positions % window
    patterns = ["none", "first", "question", "random"]
    cases = []
    for i, length in enumerate(
        sorted({min(n, limit) for n in (1, window - 1, window + 1, 3 * window + 5)})
    ):
        lengths = (
            [length] if i % 2 == 0 else [length, max(1, length - int(rng.integers(1, window)))]
        )
        pattern = patterns[i % len(patterns)]
        cases.append(
            (
                f"len={lengths} global={pattern}",
                random_encoder_inputs(rng, config.vocab_size, lengths, pattern),
            )
        )
    return cases


@torch.no_grad()
def reference_encoder(model, inputs: dict) -> dict[str, np.ndarray]:
    """transformers' encoder output and each decoder layer's cross-attention K/V projections."""
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    hidden = model.get_encoder()(**tensors).last_hidden_state
    out = {"last_hidden_state": hidden.numpy()}
    for i, layer in enumerate(model.get_decoder().layers):
        attn = layer.encoder_attn
        for template, proj in ((CROSS_KEY, attn.k_proj), (CROSS_VALUE, attn.v_proj)):
            kv = proj(hidden).unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)
            out[template.format(layer=i)] = kv.numpy()
    return out


@torch.no_grad()
def reference_decoder_logits(model, encoder_hidden, attention_mask, tokens) -> list[np.ndarray]:
    """transformers' logits for each teacher-forced step, one token at a time with its KV cache."""
    encoder_outputs = (torch.from_numpy(encoder_hidden),)
    mask, past, logits = torch.from_numpy(attention_mask), None, []
    for step in range(tokens.shape[1]):
        out = model(
            encoder_outputs=encoder_outputs,
            attention_mask=mask,
            decoder_input_ids=torch.from_numpy(tokens[:, step : step + 1]),
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        logits.append(out.logits.numpy())
    return logits


def run_decoder_steps(decoder: ort.InferenceSession, config, encoder_out, encoder_mask, tokens):
    """The ONNX decoder over the same steps, feeding each step's present cache back as past.

    Its cross K/V come from the ONNX encoder, so the decoder's error includes the encoder's."""
    past_type = next(i.type for i in decoder.get_inputs() if i.name == PAST_KEY.format(layer=0))
    float_type = np.float16 if past_type == "tensor(float16)" else np.float32
    batch, heads = tokens.shape[0], config.decoder_attention_heads
    empty = np.zeros((batch, heads, 0, config.d_model // heads), float_type)
    layers = range(config.decoder_layers)
    past = {t.format(layer=i): empty for i in layers for t in (PAST_KEY, PAST_VALUE)}
    cross = {
        t.format(layer=i): encoder_out[t.format(layer=i)]
        for i in layers
        for t in (CROSS_KEY, CROSS_VALUE)
    }
    names = [o.name for o in decoder.get_outputs()]
    logits = []
    for step in range(tokens.shape[1]):
        feed = {
            "input_ids": tokens[:, step : step + 1],
            "attention_mask": np.ones((batch, step + 1), np.int64),
            "encoder_attention_mask": encoder_mask,
            "request_rows": np.arange(batch)[:, None],  # one row per request, in order
            "row_slots": np.arange(batch),
            **past,
            **cross,
        }
        out = dict(zip(names, decoder.run(None, feed), strict=True))
        logits.append(out["logits"])
        past = {
            p.format(layer=i): out[q.format(layer=i)]
            for i in layers
            for p, q in ((PAST_KEY, PRESENT_KEY), (PAST_VALUE, PRESENT_VALUE))
        }
    return logits


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def compare(graph, output, case, got, want, dtype) -> Check:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    max_abs = float(np.abs(got - want).max()) if got.size else 0.0
    max_rel = max_abs / max(float(np.abs(want).max()) if want.size else 0.0, 1e-12)
    rms_rel = _rms(got - want) / max(_rms(want), 1e-12)
    errors = {"max_abs": max_abs, "max_rel": max_rel, "rms_rel": rms_rel}
    metric, limit = TOLERANCES[dtype]
    finite = bool(np.isfinite(got).all())
    return Check(graph, output, case, max_abs, max_rel, finite and errors[metric] <= limit, rms_rel)


def validate(model, folder, dtype: str, device: str = "cpu", seed: int | None = None) -> Validation:
    """Run both sides on fresh random inputs; returns the checks and whether all passed."""
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed
    rng = np.random.default_rng(seed)
    config = model.config
    if config.model_type == "longformer":
        checks = _extractive_checks(model, folder, dtype, device, rng)
        return _validation(seed, device, dtype, checks)
    encoder = session(folder / "encoder.onnx", device)
    decoder = session(folder / "decoder.onnx", device)
    encoder_names = [o.name for o in encoder.get_outputs()]
    checks, agree, steps_seen = [], 0, 0
    steps = min(DECODER_STEPS, config.max_decoder_position_embeddings)
    for case, inputs in encoder_cases(config, rng):
        want = reference_encoder(model, inputs)
        got = dict(zip(encoder_names, encoder.run(None, inputs), strict=True))
        checks += [
            compare("encoder", name, case, got[name], want[name], dtype) for name in encoder_names
        ]

        tokens = rng.integers(5, config.vocab_size, (inputs["input_ids"].shape[0], steps))
        tokens[:, 0] = config.decoder_start_token_id
        want_logits = reference_decoder_logits(
            model, want["last_hidden_state"], inputs["attention_mask"], tokens
        )
        got_logits = run_decoder_steps(decoder, config, got, inputs["attention_mask"], tokens)
        argmax = [
            np.argmax(g, -1) == np.argmax(w, -1)
            for g, w in zip(got_logits, want_logits, strict=True)
        ]
        agree, steps_seen = agree + int(np.sum(argmax)), steps_seen + int(np.size(argmax))
        checks.append(
            compare(
                "decoder",
                "logits",
                f"{case} steps={steps}",
                np.stack(got_logits),
                np.stack(want_logits),
                dtype,
            )
        )
    return _validation(seed, device, dtype, checks, agree / max(steps_seen, 1))


@torch.no_grad()
def _extractive_checks(model, folder, dtype: str, device: str, rng) -> list[Check]:
    """The span graph against transformers' LongformerForQuestionAnswering on the encoder cases;
    padding positions (junk on both sides) are left out. One check per output over all cases:
    a case of one token holds a single logit, no scale for a relative error."""
    qa = session(folder / "qa.onnx", device)
    names = [o.name for o in qa.get_outputs()]
    got, want, cases = {n: [] for n in names}, {n: [] for n in names}, []
    for case, inputs in encoder_cases(model.config, rng):
        reference = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        outputs = dict(zip(names, qa.run(None, inputs), strict=True))
        kept = inputs["attention_mask"] == 1
        for name in names:
            got[name].append(outputs[name][kept])
            want[name].append(getattr(reference, name).numpy()[kept])
        cases.append(case)
    case = "; ".join(cases)
    return [
        compare("qa", n, case, np.concatenate(got[n]), np.concatenate(want[n]), dtype)
        for n in names
    ]


def _validation(seed, device, dtype, checks, argmax_agreement=None) -> Validation:
    metric, limit = TOLERANCES[dtype]
    return Validation(
        seed=seed,
        device=device,
        dtype=dtype,
        criterion=f"{metric} <= {limit:g}",
        passed=all(c.passed for c in checks),
        checks=tuple(checks),
        argmax_agreement=argmax_agreement,
    )


def format_table(report: Validation) -> str:
    """One row per graph output: the worst error over all cases."""
    worst: dict[tuple[str, str], list] = {}
    for c in report.checks:
        row = worst.setdefault((c.graph, c.output), [0.0, 0.0, 0.0, True, 0])
        row[:3] = max(row[0], c.max_abs), max(row[1], c.max_rel), max(row[2], c.rms_rel)
        row[3], row[4] = row[3] and c.passed, row[4] + 1
    rows = [("graph", "output", "cases", "max abs", "max rel", "rms rel", "ok")]
    for (graph, output), (max_abs, max_rel, rms_rel, passed, cases) in worst.items():
        rows.append((graph, output, str(cases), f"{max_abs:.2e}", f"{max_rel:.2e}",
                     f"{rms_rel:.2e}", "yes" if passed else "NO"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if report.argmax_agreement is not None:
        lines.append(f"decoder argmax equal to transformers' at {report.argmax_agreement:.1%} "
                     "of teacher-forced steps")  # fmt: skip
    verdict = "passed" if report.passed else "FAILED"
    lines.append(
        f"validation {verdict}: {report.dtype} on {report.device}, {report.criterion}, "
        f"seed {report.seed}"
    )
    return "\n".join(lines)
