"""The extractive engine: answer spans from a Longformer question-answering graph with the
semantics of transformers' question-answering pipeline (engine/spans.py). Question and context are
tokenized as a pair, cut into windows of `max_seq_len` tokens (the model's maximum by default)
overlapping by `doc_stride`, global attention on CLS and the question. One runner thread packs
the waiting windows of all requests, one of each in turn, into batches of at most
`max_batch_tokens` padded tokens: a long document never runs one window at a time, and a short
request does not wait behind all of a long one's windows.
"""

import functools
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ledserve.engine.artifacts import Artifacts
from ledserve.engine.errors import ArtifactError, CapacityExceeded, InvalidRequest
from ledserve.engine.runtime import open_session, resolve_device, session_options
from ledserve.engine.spans import Window, context_answers, ranked
from ledserve.manifest import EXTRACTIVE_QA, Manifest

IDLE_SECONDS = 1.0  # the runner thread ends after this long without work
MAX_TOP_K = 100
MAX_PADDING = 0.25  # of a batch's tokens


@dataclass(frozen=True)
class ExtractorConfig:
    max_batch_tokens: int = 16384
    """Padded tokens in one graph run (a window longer than this runs alone)."""
    max_queued_windows: int = 1024
    """Windows waiting to run, all requests together; past it, submit raises CapacityExceeded."""
    max_context_characters: int = 2_000_000
    """Characters of one request's passages together, refused past it before tokenizing."""

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_queued_windows", "max_context_characters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ExtractParams:
    """The pipeline's parameters, checked against the model and the question by `Extractor`."""

    top_k: int = 1
    """Answers returned (fewer when the documents hold fewer)."""
    max_answer_len: int = 15
    """Longest answer, in tokens."""
    handle_impossible_answer: bool = False
    """The no-answer ("" at 0, 0, scored by CLS) may be among the answers."""
    doc_stride: int | None = None
    """Tokens shared by neighbouring windows; None: min(max_seq_len // 2, 128), the pipeline's."""
    max_seq_len: int | None = None
    """Tokens per window, question and special tokens included; None: the model's maximum."""


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    passage: int
    """Which passage the answer is in (its start and end are character offsets there)."""
    start: int
    end: int


@dataclass(frozen=True)
class Extraction:
    answers: list[Answer]
    """Best first; with handle_impossible_answer, the no-answer ("", passage 0, 0, 0) among
    them where its score ranks."""
    no_answer_score: float
    """CLS's start x end probability, the minimum over all windows."""
    windows: int
    """Model inputs the passages were cut into."""
    input_tokens: int


@dataclass(eq=False)
class Job:
    """One passage's windows on their way through the runner."""

    windows: list[Window]
    logits: list = field(default_factory=list)  # per window (start, end), filled by the runner
    queued: deque = field(default_factory=deque)  # indices of the windows not yet run
    error: Exception | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    on_done: object = None  # the request's callback, once all its jobs are done

    def __post_init__(self):
        self.logits = [None] * len(self.windows)
        self.queued = deque(range(len(self.windows)))

    def finish(self):
        if not self.done.is_set():
            self.done.set()
            if self.on_done is not None:
                self.on_done()


@dataclass(eq=False)
class Pending:
    """A request between `prepare` and `finish`."""

    passages: list[str]
    params: ExtractParams
    jobs: list[Job]
    on_done: object = None  # called once, when the last of its jobs is done

    def __post_init__(self):
        if self.on_done is not None:
            for job in self.jobs:
                job.on_done = self._one_done
            self._remaining, self._lock = len(self.jobs), threading.Lock()

    def _one_done(self):
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self.on_done()

    def raise_error(self):
        for job in self.jobs:
            if job.error is not None:
                raise job.error


class Extractor:
    """`Engine.from_artifacts` returns one for an extractive artifacts folder."""

    task = EXTRACTIVE_QA
    max_top_k = MAX_TOP_K

    def __init__(self, artifacts: Artifacts, device: str = "cpu", **config):
        if artifacts.manifest.task != EXTRACTIVE_QA:
            raise ArtifactError(f"{artifacts.folder} serves {artifacts.manifest.task}")
        self.artifacts, self.device_name = artifacts, device
        self.config = ExtractorConfig(**config)
        self.session = open_session(artifacts.graph("qa"), device, session_options())
        self.max_input = artifacts.manifest.model.max_encoder_positions
        self.pad_id = artifacts.manifest.special_tokens.pad
        self.sep_id = artifacts.manifest.special_tokens.eos
        self._pending: deque[Job] = deque()  # jobs with windows not yet run, in turn
        self._queued_windows = 0
        self._lock = threading.Condition()
        # A fast tokenizer called with truncation settings changes its own state: two threads
        # at once fail ("Already borrowed").
        self._tokenizing = threading.Lock()
        self._thread: threading.Thread | None = None
        self.runs = 0  # graph runs
        self.windows_run = 0

    @classmethod
    def from_artifacts(cls, path, device: str = "auto", verify: bool = True, **config):
        return cls(Artifacts.load(path, verify=verify), resolve_device(device), **config)

    @property
    def manifest(self) -> Manifest:
        return self.artifacts.manifest

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.artifacts.folder))

    # -- the API -------------------------------------------------------------------------------
    def extract(self, question: str, context: str, top_k: int = 1, max_answer_len: int = 15,
                handle_impossible_answer: bool = False, doc_stride: int | None = None,
                max_seq_len: int | None = None):  # fmt: skip
        """What transformers' `pipeline("question-answering")` returns for the same question,
        context and parameters (with `max_seq_len` the model's maximum unless given): a dict
        with score, start, end and answer for a single answer, else a list of them."""
        params = ExtractParams(top_k, max_answer_len, handle_impossible_answer, doc_stride,
                               max_seq_len)  # fmt: skip
        request = self.prepare(question, [context], params)
        self.wait(request)
        return ranked(*self._found(request)[0], top_k, handle_impossible_answer)

    def extract_passages(self, question: str, passages: list[str], **params) -> Extraction:
        """Answers from several passages at once, each passage a context of its own (its windows
        batched with the others'): the best `top_k` of all of them."""
        request = self.prepare(question, passages, ExtractParams(**params))
        self.wait(request)
        return self.finish(request)

    def prepare(self, question: str, passages: list[str], params: ExtractParams,
                on_done=None) -> "Pending":  # fmt: skip
        """Check and tokenize a request and queue its windows (the slow part of a huge
        document is here, in the caller's thread). `on_done` is called, on the runner thread,
        once every window ran or one failed."""
        with self._tokenizing:
            window, stride = self._check(question, passages, params)
            jobs = [Job(self._windows(question, p, window, stride)) for p in passages]
        request = Pending(passages, params, jobs, on_done)
        self._submit(request)
        return request

    def wait(self, request: "Pending"):
        """Block until the request's windows ran; raises the error that ended them."""
        try:
            for job in request.jobs:
                job.done.wait()
        finally:
            self.cancel(request)
        request.raise_error()

    def cancel(self, request: "Pending"):
        """Its windows not run yet are dropped (a no-op once it finished)."""
        for job in request.jobs:
            job.cancelled = True

    def finish(self, request: "Pending") -> Extraction:
        """The answers of a request whose windows ran."""
        request.raise_error()
        params = request.params
        found = self._found(request)
        answers = [
            Answer(a["answer"], a["score"], passage, a["start"], a["end"])
            for passage, (own, _) in enumerate(found)
            for a in own
        ]
        null_score = min(null for _, null in found)
        if params.handle_impossible_answer:
            answers.append(Answer("", null_score, 0, 0, 0))
        answers = sorted(answers, key=lambda a: a.score, reverse=True)[: params.top_k]
        windows = [w for job in request.jobs for w in job.windows]
        tokens = sum(len(w.input_ids) for w in windows)
        return Extraction(answers, null_score, len(windows), tokens)

    def _found(self, request: "Pending") -> list[tuple[list[dict], float]]:
        """Per passage: its answers (merged over its windows) and its no-answer score."""
        top_k, longest = request.params.top_k, request.params.max_answer_len
        return [
            context_answers(passage, job.windows, job.logits, top_k, longest)
            for passage, job in zip(request.passages, request.jobs, strict=True)
        ]

    def stop(self):
        with self._lock:
            for job in self._pending:
                job.error = job.error or CapacityExceeded("the extractor stopped")
                job.finish()
            self._pending.clear()
            self._lock.notify_all()

    # -- requests -------------------------------------------------------------------------------
    def _check(self, question, passages, params: ExtractParams) -> tuple[int, int]:
        """The window and stride of a valid request; InvalidRequest naming the field and the
        limit otherwise."""
        if not isinstance(question, str) or not question.strip():
            raise InvalidRequest("question must not be empty")
        if not passages or any(not isinstance(p, str) or not p.strip() for p in passages):
            raise InvalidRequest("context must not be empty (nor any passage)")
        characters = sum(len(p) for p in passages)
        if characters > self.config.max_context_characters:
            raise InvalidRequest(
                f"context has {characters} characters; the limit is "
                f"{self.config.max_context_characters} (max_context_characters)"
            )
        if not 1 <= params.top_k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {params.top_k}")
        window = self.max_input if params.max_seq_len is None else params.max_seq_len
        if not 1 <= window <= self.max_input:
            raise InvalidRequest(
                f"max_seq_len must be between 1 and the model's maximum {self.max_input}, "
                f"got {window}"
            )
        if not 1 <= params.max_answer_len <= window:
            raise InvalidRequest(
                f"max_answer_len must be between 1 and max_seq_len ({window}), "
                f"got {params.max_answer_len}"
            )
        stride = min(window // 2, 128) if params.doc_stride is None else params.doc_stride
        tokens = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
        room = window - tokens - self.tokenizer.num_special_tokens_to_add(pair=True)
        if room < 1:  # one context token at least
            most = window - self.tokenizer.num_special_tokens_to_add(pair=True) - 1
            raise InvalidRequest(
                f"question has {tokens} tokens; a window of max_seq_len {window} tokens holds at "
                f"most {most} question tokens"
            )
        if not 0 <= stride < room:
            raise InvalidRequest(
                f"doc_stride must be between 0 and {room - 1} (the context tokens a window of "
                f"max_seq_len {window} holds beside this question, less one), got {stride}"
            )
        return window, stride

    def _windows(self, question: str, context: str, window: int, stride: int) -> list[Window]:
        encoded = self.tokenizer(
            text=question,
            text_pair=context,
            truncation="only_second",
            max_length=window,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        cls_id = self.tokenizer.cls_token_id
        windows = []
        for i, ids in enumerate(encoded["input_ids"]):
            ids = np.asarray(ids, np.int64)
            in_context = np.array([s == 1 for s in encoded.sequence_ids(i)])
            # CLS stays a candidate: it scores the no-answer (the pipeline's p_mask)
            windows.append(Window(ids, in_context | (ids == cls_id), encoded[i]))
        return windows

    # -- the runner -----------------------------------------------------------------------------
    def _submit(self, request: "Pending"):
        jobs = request.jobs
        count = sum(len(j.windows) for j in jobs)
        with self._lock:
            if self._queued_windows + count > self.config.max_queued_windows:
                raise CapacityExceeded(
                    f"{self._queued_windows} windows are queued and this request adds {count}; "
                    f"the limit is {self.config.max_queued_windows} (max_queued_windows)"
                )
            self._queued_windows += count
            self._pending.extend(jobs)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ledserve-extractor", daemon=True
                )
                self._thread.start()
            self._lock.notify()

    def _take(self) -> list[tuple[Job, int]]:
        """The next batch: one waiting window of each job in turn, within max_batch_tokens and
        at most MAX_PADDING of them padding (a document's short last window runs apart from its
        full ones: padded together, a 4k-token document cost 1.9x the tokens)."""
        batch, longest, real, skipped = [], 0, 0, 0
        while self._pending and skipped < len(self._pending):
            job = self._pending[0]
            if job.cancelled:
                self._pending.popleft()
                self._queued_windows -= len(job.queued)
                job.queued.clear()
                continue
            n = len(job.windows[job.queued[0]].input_ids)
            padded = (len(batch) + 1) * max(longest, n)
            if batch and (padded > self.config.max_batch_tokens
                          or padded - real - n > MAX_PADDING * padded):  # fmt: skip
                self._pending.rotate(-1)  # not in this batch; its turn stays next time
                skipped += 1
                continue
            batch.append((job, job.queued.popleft()))
            longest, real, skipped = max(longest, n), real + n, 0
            self._pending.rotate(-1) if job.queued else self._pending.popleft()
        self._queued_windows -= len(batch)
        return batch

    def _run(self):
        while True:
            with self._lock:
                if not self._pending:
                    self._lock.wait(IDLE_SECONDS)
                if not self._pending:
                    self._thread = None
                    return
                batch = self._take()
            if not batch:
                continue
            try:
                starts, ends = self._run_batch([job.windows[i] for job, i in batch])
                error = None
            except Exception as e:  # ends this batch's requests only
                error = e
            for row, (job, i) in enumerate(batch):
                if error is not None:
                    job.error = error
                else:
                    n = len(job.windows[i].input_ids)
                    job.logits[i] = (starts[row, :n], ends[row, :n])
                if job.error is not None or all(x is not None for x in job.logits):
                    job.finish()

    def _run_batch(self, windows: list[Window]):
        """One graph run over windows right-padded to the longest -> start, end [batch, seq]."""
        length = max(len(w.input_ids) for w in windows)
        ids = np.full((len(windows), length), self.pad_id, np.int64)
        mask = np.zeros_like(ids)
        glob = np.zeros_like(ids)
        for row, w in enumerate(windows):
            n = len(w.input_ids)
            ids[row, :n], mask[row, :n] = w.input_ids, 1
            # CLS and the question: every position before the first separator, as
            # LongformerForQuestionAnswering sets it
            glob[row, : int(np.argmax(w.input_ids == self.sep_id))] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob}
        starts, ends = self.session.run(["start_logits", "end_logits"], feed)
        self.runs += 1
        self.windows_run += len(windows)
        return starts, ends
