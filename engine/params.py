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
    "encoder_repetition_penalty": (0.01, 100.0),
    "temperature": (0.01, 100.0),
    "typical_p": (1e-6, 1.0),
    "epsilon_cutoff": (0.0, 1.0),
    "eta_cutoff": (0.0, 1.0),
}
MAX_INT = 2**31 - 1  # the proto's int32 fields; no count or size may be larger
MAX_DRAFT = 64  # prompt_lookup_num_tokens: a step scores 1 + drafts positions for every row
MAX_BAD_WORDS = 1024  # bad_words_ids: sequences per request ...
MAX_BAD_WORD_TOKENS = 32  # ... each of at most this many tokens
MAX_STOPS = 16  # stop: strings per request ...
MAX_STOP_CHARACTERS = 256  # ... each of at most this many characters
MAX_TOP_N = 20  # top_n_tokens: alternatives reported per generated token
MAX_DECAY = 1e30  # exponential_decay_length_penalty: decay_factor ** steps stays below this

# generation_config keys that do not change what is generated (or are handled elsewhere).
_INERT = {"transformers_version", "_from_model_config", "bos_token_id", "use_cache"}
_ALIASES = {"stop_strings": "stop"}  # transformers' name -> ours


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
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    """Token sequences that may not be generated: the last token of each is banned where the
    tokens before it were just generated (a one-token sequence always; [EOS] alone is ignored)."""
    suppress_tokens: tuple[int, ...] = ()
    """Tokens banned at every step."""
    begin_suppress_tokens: tuple[int, ...] = ()
    """Tokens banned at the first generated token (the second after a forced BOS)."""
    encoder_no_repeat_ngram_size: int = 0
    """No n-gram of the input may be repeated in the answer (0: off)."""
    encoder_repetition_penalty: float = 1.0
    """Tokens of the input are favoured (> 1) or penalised (< 1), as repetition_penalty does
    inversely; applied to every row of a request (see README: transformers gathers the input's
    ids for the first rows of the batch only when a request has several rows)."""
    exponential_decay_length_penalty: tuple[int, float] | None = None
    """(start_index, decay_factor): from start_index generated tokens on, EOS scores grow by
    |score| * (decay_factor ** (tokens - start_index) - 1)."""
    min_p: float | None = None
    """Sampling: drop tokens whose probability is below min_p times the best one's."""
    typical_p: float = 1.0
    """Sampling: locally typical sampling's mass (1: off)."""
    epsilon_cutoff: float = 0.0
    """Sampling: drop tokens whose probability is below this (0: off)."""
    eta_cutoff: float = 0.0
    """Sampling: eta sampling's cutoff (0: off)."""
    renormalize_logits: bool = False
    """Scores are log-softmaxed after every processor (transformers' LogitNormalization)."""
    stop: tuple[str, ...] = ()
    """A sequence ends once its decoded text contains one of these (finish reason
    stop_sequence); its text ends before the first occurrence."""
    output_scores: bool = False
    """Report each generated token's log-probability under the processed distribution (what
    transformers' compute_transition_scores gives with normalize_logits=True)."""
    top_n_tokens: int = 0
    """Also the n most probable tokens at every position (0 to MAX_TOP_N); turns scores on."""
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None

    @classmethod
    def build(cls, defaults: dict, max_new_tokens_limit: int, max_beams: int,
              vocab_size: int | None = None, **overrides):  # fmt: skip
        """Defaults (a generation_config dict) overridden by a request's parameters, validated."""
        names = {f.name for f in fields(cls)} | {"max_length"}
        values = {}
        for source, given in (("generation_config", defaults), ("request", overrides)):
            for key, value in given.items():
                key = _ALIASES.get(key, key)
                if key in _INERT and source == "generation_config":
                    continue
                if key not in names:
                    if source == "generation_config" and value in (None, False, 0, 1.0, [], {}):
                        continue  # a default that changes nothing
                    raise InvalidRequest(
                        f"unsupported generation parameter {key!r} (from {source})"
                    )
                values[key] = value
        # transformers' precedence: max_new_tokens wins wherever it was set; max_length counts
        # the decoder start token (an encoder-decoder's decoder input)
        max_length = values.pop("max_length", None)
        if "max_new_tokens" not in values and max_length is not None:
            high = max_new_tokens_limit + 1
            if not (isinstance(max_length, numbers.Integral) and 2 <= max_length <= high):
                raise InvalidRequest(f"max_length must be between 2 and {high}, got {max_length!r}")
            values["max_new_tokens"] = max_length - 1
        values.update(_normalized(values))
        params = cls(**values)
        params.validate(max_new_tokens_limit, max_beams, vocab_size)
        return params

    @property
    def scored(self) -> bool:
        """Whether generated tokens carry their scores (output_scores or top_n_tokens)."""
        return self.output_scores or self.top_n_tokens > 0

    @property
    def max_length(self) -> int:
        """transformers' max_length of an encoder-decoder: the start token and the new tokens."""
        return 1 + self.max_new_tokens

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
        for name in ("min_new_tokens", "min_length", "no_repeat_ngram_size", "top_k",
                     "encoder_no_repeat_ngram_size"):  # fmt: skip
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
                         "forced_eos_token_id", "eos_token_id", "suppress_tokens",
                         "begin_suppress_tokens", "bad_words_ids"):  # fmt: skip
                value = getattr(self, name)
                ids = value if isinstance(value, tuple | list) else (value,)
                if name == "bad_words_ids":
                    ids = [i for sequence in value for i in sequence]
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
        min_p = self.min_p
        require(
            min_p is None or (isinstance(min_p, numbers.Real) and 0 <= min_p <= 1),
            f"min_p must be in [0, 1], got {min_p!r}",
        )
        require(
            self.epsilon_cutoff < 1, f"epsilon_cutoff must be in [0, 1), got {self.epsilon_cutoff}"
        )
        require(self.eta_cutoff < 1, f"eta_cutoff must be in [0, 1), got {self.eta_cutoff}")
        require(
            isinstance(self.top_n_tokens, numbers.Integral) and 0 <= self.top_n_tokens <= MAX_TOP_N,
            f"top_n_tokens must be between 0 and {MAX_TOP_N}, got {self.top_n_tokens!r}",
        )
        if self.exponential_decay_length_penalty is not None:
            start, factor = self.exponential_decay_length_penalty
            steps = max(self.max_new_tokens - start, 0)
            require(
                0 <= start <= MAX_INT
                and 0 < factor
                and math.isfinite(factor)
                and steps * math.log(factor) <= math.log(MAX_DECAY),
                "exponential_decay_length_penalty must be (start_index >= 0, decay_factor > 0) "
                f"with decay_factor ** (max_new_tokens - start_index) at most {MAX_DECAY:g} "
                f"(float32 scores), got ({start!r}, {factor!r})",
            )
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
            self.prompt_lookup_num_tokens is None or not self.scored,
            "prompt_lookup_num_tokens cannot be combined with output_scores or top_n_tokens "
            "(drafted positions are not scored one by one)",
        )
        require(
            self.prompt_lookup_num_tokens is None or (self.num_beams == 1 and not self.do_sample),
            "prompt_lookup_num_tokens needs greedy search (num_beams 1, do_sample false): "
            "a drafted token is kept only where it is the argmax",
        )


def _ids(name: str, value, limit: int | None = None) -> tuple[int, ...]:
    """A list of token ids as a tuple (ranges are checked in validate)."""
    if not isinstance(value, list | tuple) or not all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in value
    ):
        raise InvalidRequest(f"{name} must be a list of token ids, got {value!r}")
    if limit is not None and not 1 <= len(value) <= limit:
        raise InvalidRequest(f"{name} must hold 1 to {limit} token ids, got {len(value)}")
    return tuple(int(i) for i in value)


def _normalized(values: dict) -> dict:
    """List-valued parameters as tuples, their shapes checked (a field named in each message)."""
    out = {}
    eos = values.get("eos_token_id", ())
    out["eos_token_id"] = (eos,) if isinstance(eos, numbers.Integral) else tuple(eos or ())
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        if values.get(name) is not None:
            out[name] = _ids(name, values[name])
        elif name in values:
            out[name] = ()
    if values.get("bad_words_ids") is not None:
        words = values["bad_words_ids"]
        if not isinstance(words, list | tuple) or len(words) > MAX_BAD_WORDS:
            raise InvalidRequest(
                f"bad_words_ids must be a list of at most {MAX_BAD_WORDS} token-id lists"
            )
        out["bad_words_ids"] = tuple(
            _ids(f"bad_words_ids[{i}]", w, MAX_BAD_WORD_TOKENS) for i, w in enumerate(words)
        )
    elif "bad_words_ids" in values:
        out["bad_words_ids"] = ()
    if values.get("stop") is not None:
        stop = values["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list | tuple) or len(stop) > MAX_STOPS:
            raise InvalidRequest(f"stop must be a list of at most {MAX_STOPS} strings")
        for i, text in enumerate(stop):
            if not isinstance(text, str) or not 1 <= len(text) <= MAX_STOP_CHARACTERS:
                raise InvalidRequest(
                    f"stop[{i}] must be a string of 1 to {MAX_STOP_CHARACTERS} characters, "
                    f"got {text!r:.60}"
                )
        out["stop"] = tuple(stop)
    elif "stop" in values:
        out["stop"] = ()
    decay = values.get("exponential_decay_length_penalty")
    if decay is not None:
        if not (
            isinstance(decay, list | tuple) and len(decay) == 2
            and isinstance(decay[0], numbers.Integral) and isinstance(decay[1], numbers.Real)
        ):  # fmt: skip
            raise InvalidRequest(
                "exponential_decay_length_penalty must be (start_index, decay_factor), "
                f"got {decay!r}"
            )
        out["exponential_decay_length_penalty"] = (int(decay[0]), float(decay[1]))
    return out
