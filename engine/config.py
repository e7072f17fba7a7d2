"""The engine's configuration: limits, scheduling and defaults, validated at construction."""

from dataclasses import dataclass

from ledserve.engine.params import MAX_DRAFT


@dataclass(frozen=True)
class EngineConfig:
    max_rows: int = 64
    """Decoder rows (sequences, beams included) in one step."""
    max_queue: int = 256
    """Requests waiting for admission; past it, submit raises CapacityExceeded."""
    max_beams: int = 8
    """Largest num_beams (and sampled num_return_sequences) a request may ask for."""
    max_encoder_tokens: int = 65536
    """Input tokens whose cross K/V the engine holds at once, counted padded as every decoder
    run reads them: live requests x the longest live input (a longer input runs alone)."""
    max_client_rows: int | None = None
    """Decoder rows the requests of one client (Request.client) may hold at once, so that one
    client cannot take every row while others wait; None: max_rows."""
    max_global_tokens: int = 512
    """Tokens one input may mark as global (each attends to, and is attended by, the whole
    input: 4,096 of them made an input 10-50x slower and 3 GB larger); more is refused."""
    shrink_after_tokens: int | None = 8192
    """An encoder batch of at least this many padded tokens returns ONNX Runtime's arena memory
    to the system after its run (a rare long input's activations would otherwise stay reserved
    for the process's life); None: never."""
    max_encoder_batch_tokens: int = 8192
    """Padded input tokens in one encoder run (bounds the encoder's activation memory, ~0.1 MB
    per token and layer for LED-base's attention scores); a longer single input runs alone."""
    cpu_decode_share: float = 1.0
    """On a CPU, while the encoder thread has work, the share of wall time the loop thread spends
    in decode steps: after a step it pauses for the step's time x (1 / share - 1), or until a
    submission or a finished encoding. Encoder and decoder compete for the same cores, and a
    step of a few rows costs nearly what a step of many does, so a pause lets the encoder finish
    sooner and the joining requests decode together. 1.0: never pause; ignored on CUDA."""
    prompt_lookup: int | None = None
    """prompt_lookup_num_tokens of a greedy request that does not set it (`ledserve serve
    --prompt-lookup N`); None: off unless a request asks."""
    diagnostics: bool = False
    """Each request's search records its smallest decision margin (`request.search.margin`), at
    one more top-k and device->host copy per request and step: for tests, off when serving."""

    def __post_init__(self):
        for name in (
            "max_rows", "max_queue", "max_beams", "max_encoder_tokens", "max_encoder_batch_tokens",
            "max_global_tokens",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.05 <= self.cpu_decode_share <= 1.0:
            raise ValueError(
                f"cpu_decode_share must be between 0.05 and 1, got {self.cpu_decode_share}"
            )
        if self.prompt_lookup is not None and not 1 <= self.prompt_lookup <= MAX_DRAFT:
            raise ValueError(f"prompt_lookup must be between 1 and {MAX_DRAFT}")
        if self.max_client_rows is not None and not 1 <= self.max_client_rows <= self.max_rows:
            raise ValueError(
                f"max_client_rows must be between 1 and max_rows ({self.max_rows}), "
                f"got {self.max_client_rows}"
            )
