"""Protobuf <-> engine values, in one place: generation parameters both ways, the request's input,
and the summary of a finished request. Validation of the protobuf's shape happens here; the
engine validates values (ranges, limits) and names the field in its messages."""

from dataclasses import dataclass

from ledserve.engine.errors import InvalidRequest
from ledserve.proto.ledserve.v1 import ledserve_pb2 as pb

# The proto's generation fields, named as GenerationParams' (a field the engine lacks is refused
# there as an unsupported parameter, never silently dropped here).
PARAMETERS = tuple(f.name for f in pb.GenerationParameters.DESCRIPTOR.fields)
EARLY_STOPPING = {
    pb.EARLY_STOPPING_FALSE: False,
    pb.EARLY_STOPPING_TRUE: True,
    pb.EARLY_STOPPING_NEVER: "never",
}
FINISH_REASONS = {"stop": pb.STOP, "length": pb.LENGTH, "stop_sequence": pb.STOP_SEQUENCE}
_REPEATED = {f.name for f in pb.GenerationParameters.DESCRIPTOR.fields if f.is_repeated}
MAX_REQUEST_ID = 128


def parameters_to_kwargs(parameters: pb.GenerationParameters) -> dict:
    """The fields a request set, as GenerationParams overrides."""
    kwargs = {}
    for name in PARAMETERS:
        if name == "early_stopping":
            value = parameters.early_stopping
            if value == pb.EARLY_STOPPING_UNSPECIFIED:
                continue
            if value not in EARLY_STOPPING:
                raise InvalidRequest(
                    f"parameters.early_stopping: unknown value {value} "
                    "(EARLY_STOPPING_FALSE, _TRUE or _NEVER)"
                )
            kwargs[name] = EARLY_STOPPING[value]
        elif name == "bad_words_ids":
            if parameters.bad_words_ids:
                kwargs[name] = [list(word.ids) for word in parameters.bad_words_ids]
        elif name in _REPEATED:
            if getattr(parameters, name):
                kwargs[name] = list(getattr(parameters, name))
        elif name == "exponential_decay_length_penalty":
            if parameters.HasField(name):
                decay = parameters.exponential_decay_length_penalty
                kwargs[name] = (decay.start_index, decay.decay_factor)
        elif parameters.HasField(name):
            kwargs[name] = getattr(parameters, name)
    return kwargs


def kwargs_to_parameters(**kwargs) -> pb.GenerationParameters:
    """GenerationParams values (or a client's keyword arguments) as the proto message."""
    unknown = set(kwargs) - set(PARAMETERS)
    if unknown:
        raise InvalidRequest(f"unknown generation parameter(s): {', '.join(sorted(unknown))}")
    values = {k: v for k, v in kwargs.items() if v is not None}
    if "early_stopping" in values:
        codes = {v: k for k, v in EARLY_STOPPING.items()}
        if values["early_stopping"] not in codes:
            raise InvalidRequest(
                f'early_stopping must be true, false or "never", got {values["early_stopping"]!r}'
            )
        values["early_stopping"] = codes[values["early_stopping"]]
    if "bad_words_ids" in values:
        values["bad_words_ids"] = [pb.TokenIds(ids=list(w)) for w in values["bad_words_ids"]]
    if "exponential_decay_length_penalty" in values:
        start, factor = values["exponential_decay_length_penalty"]
        values["exponential_decay_length_penalty"] = pb.DecayLengthPenalty(
            start_index=start, decay_factor=factor
        )
    if isinstance(values.get("stop"), str):
        values["stop"] = [values["stop"]]
    return pb.GenerationParameters(**values)


def token_scores(scores) -> list[pb.TokenScore]:
    """engine TokenScores -> their proto messages (empty without output_scores)."""
    return [
        pb.TokenScore(logprob=s.logprob, top=[pb.TopToken(token_id=i, logprob=v) for i, v in s.top])
        for s in scores or ()
    ]


@dataclass(frozen=True)
class Input:
    """A request's input as the engine takes it."""

    question: str | None  # a document input: question and passages, templated by the engine
    passages: list[str]
    input_ids: list[int] | None  # a token input, used as it is
    global_attention_mask: list[int] | None
    truncate: bool


def request_input(request: pb.GenerateRequest) -> Input:
    if len(request.request_id) > MAX_REQUEST_ID:
        raise InvalidRequest(
            f"request_id has {len(request.request_id)} characters; the limit is {MAX_REQUEST_ID}"
        )
    if request.truncation not in (pb.TRUNCATION_UNSPECIFIED, pb.TRUNCATE_CONTEXT, pb.REJECT):
        raise InvalidRequest(f"truncation: unknown value {request.truncation}")
    truncate = request.truncation != pb.REJECT
    kind = request.WhichOneof("input")
    if kind == "document":
        document = request.document
        return Input(document.question, list(document.passages), None, None, truncate)
    if kind == "tokens":
        tokens = request.tokens
        glob = list(tokens.global_attention_mask)
        if glob and len(glob) != len(tokens.input_ids):
            raise InvalidRequest(
                f"tokens.global_attention_mask has {len(glob)} values; "
                f"tokens.input_ids has {len(tokens.input_ids)}"
            )
        return Input(None, [], list(tokens.input_ids), glob or None, truncate)
    raise InvalidRequest("input: set document (question and passages) or tokens (input_ids)")


def summary(event, tokenizer, input_tokens: int, truncated: tuple[int, int],
            arrival_offset: float, stops=None):  # fmt: skip
    """The final event of a finished request -> pb.Summary. `truncated`: the context's tokens
    and characters cut; `arrival_offset`: seconds from the request's arrival at the server to
    its submission to the engine (tokenization); `stops`: the request's StopStrings, if any
    (a sequence's text ends before its first stop)."""
    sequences = []
    for i, (tokens, reason) in enumerate(zip(event.results, event.finish_reasons, strict=True)):
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        sequence = pb.Sequence(
            text=stops.cut(text) if stops is not None else text,
            token_ids=tokens[1:],  # the decoder start token is not part of the answer
            finish_reason=FINISH_REASONS[reason],
            scores=token_scores(event.result_scores[i] if event.result_scores else None),
        )
        if event.sequence_scores is not None:
            sequence.sequence_score = event.sequence_scores[i]
        sequences.append(sequence)
    t = event.timings
    return pb.Summary(
        finish_reason=sequences[0].finish_reason,
        sequences=sequences,
        usage=pb.Usage(
            input_tokens=input_tokens,
            generated_tokens=len(sequences[0].token_ids),
            truncated_context_tokens=truncated[0],
            truncated_context_characters=truncated[1],
        ),
        timings=pb.Timings(
            queue_seconds=t["queue"],
            encode_seconds=t["encode"],
            first_token_seconds=t["first_token"] + arrival_offset,
            total_seconds=t["total"] + arrival_offset,
        ),
    )


EXTRACT_PARAMETERS = tuple(f.name for f in pb.ExtractParameters.DESCRIPTOR.fields)


def extract_parameters_to_kwargs(parameters: pb.ExtractParameters) -> dict:
    """The fields a request set, as ExtractParams values."""
    return {n: getattr(parameters, n) for n in EXTRACT_PARAMETERS if parameters.HasField(n)}


def document(request) -> tuple[str, list[str]]:
    """An ExtractRequest's question and passages."""
    if not request.HasField("document"):
        raise InvalidRequest("document is required (a question and its passages)")
    return request.document.question, list(request.document.passages)


def extraction(request_id: str, result, seconds: float) -> pb.ExtractResponse:
    return pb.ExtractResponse(
        request_id=request_id,
        answers=[
            pb.ExtractedAnswer(
                text=a.text, score=a.score, passage=a.passage, start=a.start, end=a.end
            )
            for a in result.answers
        ],
        no_answer_score=result.no_answer_score,
        windows=result.windows,
        input_tokens=result.input_tokens,
        total_seconds=seconds,
    )


def model_info(engine, extractor=None) -> pb.ModelInfo:
    """The generative engine's model (fields empty without one), the tasks served and the
    extractive model."""
    info = pb.ModelInfo()
    if engine is not None:
        info = _generation_info(engine)
        info.tasks.append(engine.task)
    if extractor is not None:
        info.tasks.append(extractor.task)
        info.extractive.CopyFrom(
            pb.ExtractiveModelInfo(
                name=extractor.manifest.source.model,
                dtype=extractor.manifest.dtype,
                device=extractor.device_name,
                max_seq_len=extractor.max_input,
                max_top_k=extractor.max_top_k,
                max_context_characters=extractor.config.max_context_characters,
            )
        )
    return info


def _generation_info(engine) -> pb.ModelInfo:
    manifest = engine.manifest
    defaults = engine.params()
    return pb.ModelInfo(
        name=manifest.source.model,
        dtype=manifest.dtype,
        device=engine.runtime.device_name,
        input_template=manifest.input_template,
        max_input_tokens=engine.max_input,
        max_new_tokens=engine.max_new_tokens,
        max_beams=engine.config.max_beams,
        max_batch_rows=engine.config.max_rows,
        max_queue=engine.config.max_queue,
        vocab_size=engine.vocab_size,
        defaults=kwargs_to_parameters(**{name: getattr(defaults, name) for name in PARAMETERS}),
    )
