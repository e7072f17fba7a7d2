"""Generation parameters: transformers' names and semantics, validated once at construction.

Defaults come from the exported generation_config (through the manifest); a request overrides
them by name. Unknown or unsupported names are an error, never silently ignored.
"""

import math
import numbers
from dataclasses import dataclass, fields

from ledserve.engine.errors import InvalidRequest

# Float ranges within which no score can overflow float32: logits stay far below 1e4, so a penalty
# or 1 / temperature of at most 100 keeps them below 1e6, and a length penalty of at most 10 keeps
# generated_length ** length_penalty below 1e31 for the 1,023 tokens an LED decoder can make.
FLOAT_RANGES = {
    "length_penalty": (-10.0, 10.0),
    "repetition_penalty": (0.01, 100.0),
    "temperature": (0.01, 100.0),
}
MAX_INT = 2**31 - 1  # the proto's int32 fields; no count or size may be larger
MAX_DRAFT = 64  # prompt_lookup_num_tokens: a step scores 1 + drafts positions for every row

# generation_config keys that do not change what is generated (or are handled elsewhere).
_INERT = {"transformers_version", "_from_model_config", "bos_token_id", "use_cache", "max_length"}


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 19
    """Tokens to generate at most, EOS included (transformers' default max_length 20 - 1)."""
    min_new_tokens: int = 0
    """EOS is suppressed until this many tokens were generated."""
    min_length: int = 0
    """Like min_new_tokens, counted with the decoder start token (transformers' min_length)."""
    num_beams: int = 1
    length_penalty: float = 1.0
    """Beam scores are divided by generated_length ** length_penalty."""
    early_stopping: bool | str = False
    """True, False or "never", as in transformers' beam search."""
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None
    """Seed of a request's own random generator (sampling); None draws one."""
    prompt_lookup_num_tokens: int | None = None
    """Greedy only: draft up to this many tokens per step from the request's own input (prompt
    lookup), verified in the step's decoder run; the tokens are those of plain greedy."""
    max_matching_ngram_size: int | None = None
    """Prompt lookup: the longest suffix of the generated tokens searched in the input (None: 2,
    transformers' default)."""
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None

    @classmethod
    def build(cls, defaults: dict, max_new_tokens_limit: int, max_beams: int,
              vocab_size: int | None = None, **overrides):  # fmt: skip
        """Defaults (a generation_config dict) overridden by a request's parameters, validated."""
        names = {f.name for f in fields(cls)}
        values = {}
        for source, given in (("generation_config", defaults), ("request", overrides)):
            for key, value in given.items():
                if key in _INERT and source == "generation_config":
                    continue
                if key not in names:
                    if source == "generation_config" and value in (None, False, 0, 1.0, [], {}):
                        continue  # a default that changes nothing
                    raise InvalidRequest(
                        f"unsupported generation parameter {key!r} (from {source})"
                    )
                values[key] = value
        if "max_new_tokens" not in values and defaults.get("max_length") is not None:
            values["max_new_tokens"] = defaults["max_length"] - 1  # minus the decoder start token
        eos = values.get("eos_token_id", ())
        values["eos_token_id"] = (eos,) if isinstance(eos, int) else tuple(eos or ())
        params = cls(**values)
        params.validate(max_new_tokens_limit, max_beams, vocab_size)
        return params

    def validate(self, max_new_tokens_limit: int, max_beams: int, vocab_size: int | None = None):
        def require(ok: bool, message: str):
            if not ok:
                raise InvalidRequest(message)

        for name, (low, high) in FLOAT_RANGES.items():
            value = getattr(self, name)
            require(
                isinstance(value, numbers.Real) and math.isfinite(value) and low <= value <= high,
                f"{name} must be between {low:g} and {high:g}, got {value!r}",
            )
        for name in ("min_new_tokens", "min_length", "no_repeat_ngram_size", "top_k"):
            value = getattr(self, name)
            require(
                isinstance(value, numbers.Integral) and 0 <= value <= MAX_INT,
                f"{name} must be between 0 and {MAX_INT}, got {value!r}",
            )
        seed = self.seed
        require(
            seed is None or (isinstance(seed, numbers.Integral) and 0 <= seed < 2**64),
            f"seed must be between 0 and 2**64 - 1, got {seed!r}",
        )
        if vocab_size is not None:
            for name in ("pad_token_id", "decoder_start_token_id", "forced_bos_token_id",
                         "forced_eos_token_id", "eos_token_id"):  # fmt: skip
                value = getattr(self, name)
                ids = value if isinstance(value, tuple | list) else (value,)
                valid = (isinstance(i, numbers.Integral) and 0 <= i < vocab_size for i in ids)
                require(
                    value is None or all(valid),
                    f"{name} must hold token ids between 0 and {vocab_size - 1}, got {value!r}",
                )

        limit = max_new_tokens_limit
        require(
            1 <= self.max_new_tokens <= limit,
            f"max_new_tokens must be between 1 and {limit}, got {self.max_new_tokens}",
        )
        require(
            1 <= self.num_beams <= max_beams,
            f"num_beams must be between 1 and {max_beams}, got {self.num_beams}",
        )
        require(
            self.early_stopping in (True, False, "never"),
            f'early_stopping must be true, false or "never", got {self.early_stopping!r}',
        )
        require(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        limit, bound = (max_beams, "max beams") if self.do_sample else (self.num_beams, "num_beams")
        require(
            1 <= self.num_return_sequences <= limit,
            f"num_return_sequences must be between 1 and {limit} ({bound}), "
            f"got {self.num_return_sequences}",
        )
        require(self.decoder_start_token_id is not None, "decoder_start_token_id is not set")
        for name, high in (
            ("prompt_lookup_num_tokens", MAX_DRAFT),
            ("max_matching_ngram_size", 16),
        ):
            value = getattr(self, name)
            require(
                value is None or (isinstance(value, numbers.Integral) and 1 <= value <= high),
                f"{name} must be between 1 and {high}, got {value!r}",
            )
        require(
            self.prompt_lookup_num_tokens is None or (self.num_beams == 1 and not self.do_sample),
            "prompt_lookup_num_tokens needs greedy search (num_beams 1, do_sample false): "
            "a drafted token is kept only where it is the argmax",
        )
