"""The Engine: owns the sessions and the scheduler, runs the decode loop, and is the public API.

Every step follows the scheduler's plan (engine/scheduler.py): admitted requests are encoded,
batched by length, on the encoder thread (engine/encoder.py; a short batch on the loop, within a
step's time), those encoded join the decode batch (engine/batch.py), and one decoder run covers
every live row (engine/step.py: tokens chosen on the device, one host copy, events). A request
joining other rows takes its first step in a run of its own; while a long run computes, the loop
serves arrivals, so a short request's first token does not wait for a long neighbour's step.
The scheduler then ends finished, failed and cancelled requests. `generate` and `stream` drive
the loop themselves when no loop thread runs.
"""

import functools
import itertools
import threading
import time
from dataclasses import replace

import numpy as np

from ledserve.engine.artifacts import Artifacts
from ledserve.engine.batch import DecodeBatch
from ledserve.engine.config import EngineConfig
from ledserve.engine.detokenize import Detokenizer
from ledserve.engine.encoder import EncoderWorker, encode_batch
from ledserve.engine.errors import InvalidRequest, WrongTask
from ledserve.engine.params import GenerationParams
from ledserve.engine.prompt import PromptBuilder
from ledserve.engine.request import Event, Request
from ledserve.engine.runtime import Runtime, one_host_thread, resolve_device
from ledserve.engine.scheduler import Scheduler
from ledserve.engine.step import step_batch
from ledserve.engine.stops import StopStrings, StopText
from ledserve.manifest import EXTRACTIVE_QA, GENERATION, Manifest


class Engine:
    task = GENERATION

    def __init__(self, runtime: Runtime, config: EngineConfig):
        self.runtime, self.config = runtime, config
        manifest = self.manifest
        self.defaults = dict(manifest.generation_defaults)
        specials = manifest.special_tokens
        self.defaults.setdefault("decoder_start_token_id", specials.decoder_start)
        self.defaults.setdefault("eos_token_id", specials.eos)
        self.defaults.setdefault("pad_token_id", specials.pad)
        self.max_input = manifest.model.max_encoder_positions
        self.max_new_tokens = manifest.model.max_decoder_positions - 1
        self.vocab_size = manifest.model.vocab_size
        self.scheduler = Scheduler(config.max_rows, config.max_queue, config.max_encoder_tokens,
                                   config.max_encoder_batch_tokens,
                                   config.max_client_rows)  # fmt: skip
        self._batch: DecodeBatch | None = None  # while requests decode
        self._wake = threading.Event()
        encode = functools.partial(encode_batch, runtime, self.defaults["pad_token_id"],
                                   config.shrink_after_tokens)  # fmt: skip
        self.encoder = EncoderWorker(encode, self._wake)
        self._thread: threading.Thread | None = None
        self.steps = 0  # loop iterations that ran the decoder
        self._step_seconds = 0.0  # the last step's decoder run and token choice
        self._apart_seconds = 0.0  # the last run of joining requests' first step (_first_steps)
        self.decoder_calls = 0  # decoder graph runs (one per step)
        self.decoder_rows = 0  # rows summed over those runs
        self.draft_tokens = 0  # prompt lookup: drafted tokens, verified in decoder runs
        self.accepted_draft_tokens = 0  # those greedy kept

    @property
    def manifest(self) -> Manifest:
        """What the artifacts say of the model: source, dtype, dimensions, template, defaults."""
        return self.runtime.artifacts.manifest

    @classmethod
    def from_artifacts(cls, path, device: str = "auto", verify: bool = True, **config):
        """The engine of an artifacts folder: an Engine for an LED, an Extractor
        (engine/extractive.py) for a Longformer question-answering model (`config` then holds
        ExtractorConfig's fields)."""
        artifacts = Artifacts.load(path, verify=verify)
        if artifacts.manifest.task == EXTRACTIVE_QA:
            from ledserve.engine.extractive import Extractor

            return Extractor(artifacts, resolve_device(device), **config)
        return cls(Runtime(artifacts, resolve_device(device)), EngineConfig(**config))

    def extract(self, *args, **kwargs):
        raise WrongTask(
            f"{self.manifest.source.model} generates answers; answer spans need an extractive "
            "model's artifacts (a Longformer question-answering checkpoint)"
        )

    # -- requests -------------------------------------------------------------------------
    def params(self, **overrides) -> GenerationParams:
        params = GenerationParams.build(
            self.defaults, self.max_new_tokens, self.config.max_beams, self.vocab_size, **overrides
        )
        greedy = params.num_beams == 1 and not params.do_sample and not params.scored
        if greedy and self.config.prompt_lookup and "prompt_lookup_num_tokens" not in overrides:
            params = replace(params, prompt_lookup_num_tokens=self.config.prompt_lookup)
        return params

    def submit(self, input_ids, global_attention_mask=None, events=None, client=None,
               **params) -> Request:  # fmt: skip
        """Queue one input (token ids) for generation. `events` receives the request's Events
        (anything with `put`; a fresh queue.Queue by default); `client` names its sender for
        fair admission (max_client_rows)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise InvalidRequest("input_ids must be a non-empty list of token ids")
        if ids.size > self.max_input:
            raise InvalidRequest(
                f"input has {ids.size} tokens; the model's maximum is {self.max_input}"
            )
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise InvalidRequest(
                f"input_ids holds {bad}, outside the vocabulary (0 to {self.vocab_size - 1})"
            )
        glob = (
            np.zeros_like(ids)
            if global_attention_mask is None
            else np.asarray(global_attention_mask, np.int64)
        )
        if glob.shape != ids.shape:
            raise InvalidRequest("global_attention_mask must have the length of input_ids")
        if not np.isin(glob, (0, 1)).all():
            raise InvalidRequest("global_attention_mask values must be 0 or 1")
        if glob.sum() > self.config.max_global_tokens:
            raise InvalidRequest(
                f"global_attention_mask marks {glob.sum()} tokens as global; the limit is "
                f"{self.config.max_global_tokens} (max_global_tokens)"
            )
        params = self.params(**params)
        stops = StopStrings(params.stop, self.tokenizer) if params.stop else None
        request = Request(ids, glob, params, diagnostics=self.config.diagnostics, stops=stops)
        request.client = client
        if events is not None:
            request.events = events
        name = "max_client_rows" if self.config.max_client_rows else "max_rows"
        if request.rows > getattr(self.config, name):
            raise InvalidRequest(
                f"request needs {request.rows} rows (beams or returned sequences); "
                f"{name} is {getattr(self.config, name)}"
            )
        self.scheduler.submit(request)
        self._wake.set()
        return request

    def cancel(self, request: Request):
        """The request stops at the next step boundary and frees its rows."""
        request.cancelled = True
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------
    @property
    def waiting(self):
        """Requests not admitted yet, in order."""
        return self.scheduler.waiting

    @property
    def running(self) -> list[Request]:
        """Requests decoding, in the decode batch's order."""
        return self.scheduler.running

    @property
    def encoding(self) -> list[Request]:
        """Admitted requests whose encoder batch has not finished."""
        return self.encoder.in_flight

    def step(self) -> bool:
        """One iteration; returns False when no decoder ran (nothing to do, or only encoding)."""
        # On the CPU, unless a request this step may decode (running, encoding, waiting) samples.
        one = self.runtime.device.type == "cpu" and not any(
            r.params.do_sample for r in itertools.chain(self.running, self.encoding, self.waiting)
        )
        with one_host_thread(one):
            return self._step()

    def _step(self) -> bool:
        plan = self.scheduler.schedule(self.encoding, self.encoder.collect())
        budget = self._step_seconds if self._batch is not None else 0.0  # while rows decode
        self.scheduler.join(self.encoder.dispatch(plan.encode, budget))
        if self._first_steps():
            self.scheduler.update(plan)  # those that finished or failed at once leave
        plan.decode = list(self.running)
        if not plan.decode:
            self._batch = None  # its caches go with the last request
            return False
        if self._batch is None:
            self._batch = DecodeBatch(self.runtime.device, self.config.max_encoder_tokens)
        start = time.perf_counter()
        try:
            self._batch.update(plan.decode)
            self._decode(self._batch, beside=self._serve_beside)
        except Exception as e:  # a failing decoder run ends its requests, not the engine
            for r in plan.decode:
                r.fail(e)
            self._batch = None
        self._step_seconds = time.perf_counter() - start
        self.steps += 1
        self.scheduler.update(plan)
        return True

    # -- joining a long step ----------------------------------------------------------------
    @property
    def _apart_pays(self) -> bool:
        """A first step apart costs the running requests at most half a step (not on a light
        batch, nor on a device where every run costs about the same)."""
        return self._apart_seconds <= self._step_seconds / 2

    @property
    def _serve_beside(self) -> bool:
        """Arrivals are served during a step's run once a first step apart is known to pay; on
        the CPU only (ONNX Runtime's CPU sessions take concurrent runs; on CUDA both runs would
        share one device, and that path has not been measured)."""
        cpu = self.runtime.device.type == "cpu"
        return cpu and self._apart_seconds > 0 and self._apart_pays

    def _first_steps(self) -> bool:
        """Requests that join while other rows decode take their first step in a decoder run of
        their own (their first token does not wait for a step over every row: beside long
        inputs and many beams, many times a short request's step), when that pays. Returns
        whether a run took place."""
        fresh = [r for r in self.running if r.cache is not None and r.cache.length == 0]
        if not fresh or len(fresh) == len(self.running) or not self._apart_pays:
            return False
        crosses = [r.cross for r in fresh]  # the run apart takes them; the batch needs them
        apart = DecodeBatch(self.runtime.device, self.config.max_encoder_tokens)
        start = time.perf_counter()
        try:
            apart.update(fresh)
            self._decode(apart)
            for r, cross, cache in zip(fresh, crosses, apart.split(), strict=True):
                r.cross, r.cache = cross, cache
        except Exception as e:  # as a failing step: these requests end
            for r in fresh:
                r.fail(e)
        self._apart_seconds = time.perf_counter() - start
        return True

    def _beside(self, run):
        """`run()`, a step's decoder run, on a thread of its own, while this thread serves
        arrivals: requests encoded or submitted since the step began join, are encoded here
        when short, and take their first step apart, without waiting for the step to end.
        Returns what `run` returns."""
        done, out = threading.Event(), []

        def target():
            try:
                out.append(run())
            except BaseException as e:  # raised again on the loop's thread
                out.append(e)
            finally:
                done.set()
                self._wake.set()

        threading.Thread(target=target, name="ledserve-step", daemon=True).start()
        try:
            while not done.is_set():
                self._wake.wait()
                self._wake.clear()
                if not done.is_set():
                    self._arrivals()
        finally:  # a failure here still waits for the run, which reads the batch's tensors
            done.wait()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def _arrivals(self):
        """During a step's decoder run: encoded batches join, waiting requests are admitted
        (encoded here within a step's time), and those ready take their first step apart."""
        self.scheduler.join(self.encoder.collect())  # first: admission counts their rows
        admitted = self.scheduler.admit(self.running + self.encoding) if self.waiting else []
        self.scheduler.join(self.encoder.dispatch(admitted, self._step_seconds))
        self._first_steps()

    def _decode(self, batch: DecodeBatch, beside: bool = False):
        """One decoder run over the batch's rows, and its tokens (engine/step.py). `beside`:
        arrivals are served during the run (`_beside`)."""
        done = step_batch(self.runtime, batch, self.defaults["pad_token_id"],
                           self._beside if beside else None)  # fmt: skip
        self.decoder_calls += 1
        self.decoder_rows += done.rows
        self.draft_tokens += done.drafted
        self.accepted_draft_tokens += done.accepted

    # -- driving the loop ------------------------------------------------------------------
    def start(self):
        """Run the loop on its own thread (a server's mode); `stop` ends it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ledserve-engine", daemon=True)
            self._thread.start()

    def stop(self):
        thread, self._thread = self._thread, None
        if thread is not None:
            self._wake.set()
            thread.join()
        self.encoder.stop()

    def _loop(self):
        share = self.config.cpu_decode_share if self.runtime.device.type == "cpu" else 1.0
        while self._thread is not None:
            start = time.perf_counter()
            try:
                busy = self.step()
            except Exception as e:  # a bug must not leave requests waiting forever
                self.scheduler.drop(f"engine step failed: {type(e).__name__}: {e}")
                self._batch = None
                continue
            if not busy:
                self.wait()
            elif share < 1.0 and self.encoder.in_flight:  # leave the cores to the encoder
                self.wait((time.perf_counter() - start) * (1 / share - 1))

    def wait(self, timeout: float = 0.1):
        """Nothing to decode: sleep until a submission or a finished encoding (or `timeout`)."""
        self._wake.wait(timeout)
        self._wake.clear()

    def next_event(self, request: Request) -> Event:
        """The request's next event, stepping the engine here when no loop thread runs."""
        while self._thread is None and request.events.empty():
            if not self.step():
                self.wait()
        return request.events.get()

    def run_until_done(self, requests: list[Request]) -> list[Event]:
        """Each request's final event."""
        finals = []
        for request in requests:
            event = self.next_event(request)
            while not event.finished:
                event = self.next_event(request)
            finals.append(event)
        return finals

    # -- convenience ----------------------------------------------------------------------
    def generate(self, input_ids, global_attention_mask=None, **params) -> list[list[int]]:
        """Token ids of each input row -> per row (times num_return_sequences), the tokens
        transformers' generate returns for it, decoder start token first, padding removed."""
        masks = global_attention_mask or [None] * len(input_ids)
        requests = [
            self.submit(ids, glob, **params) for ids, glob in zip(input_ids, masks, strict=True)
        ]
        out = []
        for final in self.run_until_done(requests):
            if final.error:
                raise InvalidRequest(f"request {final.request_id} ended: {final.error}")
            out += final.results
        return out

    # -- text ---------------------------------------------------------------------------
    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.runtime.artifacts.folder))

    @functools.cached_property
    def prompts(self) -> PromptBuilder:
        template = self.manifest.input_template
        return PromptBuilder(self.tokenizer, template, self.max_input)

    def answer(self, question: str, context: str | list[str], **params) -> str:
        """The answer text (first returned sequence) to a question about the context."""
        prompt = self.prompts.build(question, context)
        request = self.submit(prompt.input_ids, prompt.global_attention_mask, **params)
        final = self.run_until_done([request])[0]
        if final.error:
            raise InvalidRequest(f"request {final.request_id} ended: {final.error}")
        text = self.tokenizer.decode(final.results[0], skip_special_tokens=True)
        return request.stops.cut(text) if request.stops else text

    def stream_answer(self, question: str, context: str | list[str], **params):
        """Yield text deltas of the answer as its tokens are decided (none past a stop)."""
        detokenizer, held = Detokenizer(self.tokenizer), StopText(self.params(**params).stop)
        prompt = self.prompts.build(question, context)
        for tokens in self.stream(prompt.input_ids, prompt.global_attention_mask, **params):
            if delta := held.add(detokenizer.add(tokens)):
                yield delta
        if rest := held.add(detokenizer.flush()) + held.flush():
            yield rest

    def stream(self, input_ids, global_attention_mask=None, **params):
        """Yield lists of newly settled token ids for one input as they are decided."""
        request = self.submit(input_ids, global_attention_mask, **params)
        try:
            while True:
                event = self.next_event(request)
                if event.tokens:
                    yield event.tokens
                if event.finished:
                    return
        finally:
            self.cancel(request)  # a consumer that stops early frees the request's rows
