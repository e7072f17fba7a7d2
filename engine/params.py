"""Generation parameters: transformers' names and semantics, validated once at construction.

Defaults come from the exported generation_config (through the manifest); a request overrides
them by name. Unknown or unsupported names are an error, never silently ignored.
"""

from dataclasses import dataclass, fields

from ledserve.engine.errors import InvalidRequest

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
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None

    @classmethod
    def build(cls, defaults: dict, max_new_tokens_limit: int, max_beams: int, **overrides):
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
        params.validate(max_new_tokens_limit, max_beams)
        return params

    def validate(self, max_new_tokens_limit: int, max_beams: int):
        def require(ok: bool, message: str):
            if not ok:
                raise InvalidRequest(message)

        limit = max_new_tokens_limit
        require(
            1 <= self.max_new_tokens <= limit,
            f"max_new_tokens must be between 1 and {limit}, got {self.max_new_tokens}",
        )
        require(self.min_new_tokens >= 0, f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        require(
            1 <= self.num_beams <= max_beams,
            f"num_beams must be between 1 and {max_beams}, got {self.num_beams}",
        )
        require(
            self.early_stopping in (True, False, "never"),
            f'early_stopping must be true, false or "never", got {self.early_stopping!r}',
        )
        require(
            self.no_repeat_ngram_size >= 0,
            f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}",
        )
        require(
            self.repetition_penalty > 0,
            f"repetition_penalty must be > 0, got {self.repetition_penalty}",
        )
        require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        require(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        limit, bound = (max_beams, "max beams") if self.do_sample else (self.num_beams, "num_beams")
        require(
            1 <= self.num_return_sequences <= limit,
            f"num_return_sequences must be between 1 and {limit} ({bound}), "
            f"got {self.num_return_sequences}",
        )
        require(self.decoder_start_token_id is not None, "decoder_start_token_id is not set")
