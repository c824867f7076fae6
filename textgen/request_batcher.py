"""Batcher: many generation requests on one compiled engine at once, joining and leaving as they come.

A request takes one stream per sample, at a chunk boundary; it is primed on its own streams while the
others keep their state, and it leaves when its samples are done or its client has gone. The compiled
engine is sized to the streams in use, by buckets (1, 4, 8, 16, 32, 64 streams by default): when
requests join or leave, the running streams move to an engine of the fitting size and go on where they
were, so one client does not pay for 64 streams and 64 clients share one computation. Each request
draws its uniforms from its own generators (one per sample, seeded by its seed: generate.RequestDraws), and a
stream's arithmetic does not depend on the other streams' values, so a seeded request gives the same text
alone or batched, to the last bit of a sum: engines of different sizes run their matmuls by different kernels,
whose float32 sums differ in the last bit, and in long samples that now and then tips a near tie (measured on a
64-unit model: 1 of 64 samples of 2,000 characters changed at character 1,736 between 16 and 64 streams).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, NamedTuple, Optional

import numpy as np

from textgen import sampling
from textgen.config import SampleConfig
from textgen.generate import ENGINE_SIZES, RequestDraws, TextStreams, collect_warnings, prepare_prime

logger = logging.getLogger("textgen")
# Characters per engine call: how often requests can join and streams are delivered. A compiled call has a
# fixed cost of a few milliseconds on a 2-core CPU, so a lone stream runs longer calls (256 characters, ~15 ms
# at 1 x 512 units: 32-character calls ran it at a third of the engine's speed) and calls shorten as streams
# join, to CHUNK from 4 streams up (~30-45 ms at 32 streams; 32-character calls gave 32 clients 0.9x the
# throughput, for a first character ~15 ms sooner: BENCHMARKS.md, "Serving concurrent clients").
CHUNK = 64
LONE_CHUNK = 256


def call_length(num_streams: int) -> int:
    """Characters per engine call for an engine of num_streams streams (see CHUNK)."""
    return max(CHUNK, LONE_CHUNK // num_streams)


class Piece(NamedTuple):
    """A decided piece of a request's text: of its sample number sample (the order of TextStreams.samples), or
    the prime that all its samples start with (sample None)."""

    sample: Optional[int]
    text: str


class BatcherClosed(RuntimeError):
    """A request reached a batcher that a newer checkpoint of its run has replaced and that has since stopped."""


class Job:
    """One request in the batch: its streams' text, its rows in the engine, and where its pieces go."""

    def __init__(self, streams: TextStreams, deliver: Callable[[Optional[Piece]], None]):
        self.streams = streams
        # Called with the prime (sample None: every sample starts with it), then from the batcher's thread with
        # each decided piece of each sample, then with None when the job is over (done, cancelled or failed).
        self.deliver = deliver
        self.draws = RequestDraws(streams.config.seed, streams.indexes)
        self.rows: list[int] = []  # its streams' rows in the batcher's engine, once admitted
        self.cancelled = False
        self.error: Optional[Exception] = None
        # Told in its answer; found here, in the submitting thread, not on the server's event loop, where every
        # stream would wait for it (it converts each unknown character it names on its own)
        self.warnings = streams.unreachable_stops()

    @property
    def width(self) -> int:
        return len(self.streams.temperatures)

    def cancel(self) -> None:
        self.cancelled = True


class Batcher:
    """The engines of one run, owned by the thread that drives them."""

    def __init__(self, generator, buckets: tuple = ENGINE_SIZES, warm_up: bool = False):
        self.generator = generator
        self.vocab = generator.vocab
        self.buckets = tuple(sorted(buckets))
        self.capacity = self.buckets[-1]
        self.engine = generator.take_engine(self.buckets[0])  # this batcher's alone until it gives it back
        self.engine.reset()
        self.running: list[Job] = []  # the admitted jobs, each holding its rows of the engine
        self.waiting: deque = deque()
        self.condition = threading.Condition()
        self.retired = False  # set by retire(): finish the requests already taken, then stop
        self.closed = False  # the thread has stopped: submit() refuses
        self.stopping = False  # stop() was called: its requests are cancelled, and submit() refuses
        self.thread = threading.Thread(target=self._run, name="textgen-batcher", daemon=True)
        self.thread.start()
        # warm_up: a server's, whose clients would wait for each compilation. Not a daemon: the process waits for
        # the size it compiles (a second or two), where a thread inside TensorFlow as the interpreter ends aborts it
        # ("FATAL: exception not rethrown").
        self.warming = threading.Thread(target=self._warm_up, name="textgen-warm-up") if warm_up else None
        if self.warming is not None:
            self.warming.start()

    def _warm_up(self) -> None:
        """Compile the engine of every size this batcher may grow to, beside the requests: compiled on first use,
        each new size held every stream of the run for 1.5-2.5 s (40 clients arriving together at a fresh server
        waited 4.6-7.2 s for their first character)."""
        for size in self.buckets:
            if self.retired or not threading.main_thread().is_alive():  # stopped, or the program is ending
                return
            try:
                with self.generator.engine(size) as engine:
                    engine.warm_up()
            except Exception as error:  # the request that needs the size compiles it then
                logger.warning(f"warning: could not compile the engine of {size} streams ahead of use ({error})")
                return

    def submit(self, config: SampleConfig, deliver: Callable[[Optional[Piece]], None]) -> Job:
        """Queue a request (validated here, in the caller's thread, so errors reach it directly)."""
        config.validate()
        if config.sample_count > self.capacity:
            raise ValueError(f"at most {self.capacity} samples per request")
        # Not logged (the server's log keeps one line per request): told in the answer's warnings, which a response
        # that is not streamed needs (its options echo the prime as typed; only a stream's first piece showed the drop)
        dropped = []
        prime = prepare_prime(config.prime, self.vocab, config.skip_unknown, collect_warnings(dropped))
        job = Job(TextStreams(self.vocab, config, prime), deliver)
        job.warnings[:0] = dropped
        with self.condition:
            if self.closed or self.stopping:
                raise BatcherClosed("this batcher has stopped; submit to its run's current one")
            if prime:
                deliver(Piece(None, prime))
            self.waiting.append(job)
            self.condition.notify()
        return job

    def retire(self) -> None:
        """Finish the requests already submitted, then stop the thread and give the engine back."""
        with self.condition:
            self.retired = True
            self.condition.notify()

    def stop(self, timeout: float) -> None:
        """Cancel every request and wait up to timeout seconds for the thread to stop (a server's exit: a thread
        still inside TensorFlow when the interpreter ends can abort the process)."""
        with self.condition:
            for job in self.active() + list(self.waiting):
                job.cancel()
            self.retired = self.stopping = True
            self.condition.notify()
        deadline = time.monotonic() + timeout
        self.thread.join(timeout)
        if self.warming is not None:
            self.warming.join(max(0.0, deadline - time.monotonic()))

    def active(self) -> list[Job]:
        return list(self.running)

    def busy(self) -> bool:
        """Whether it is generating or has requests waiting."""
        with self.condition:
            return bool(self.waiting or self.running)

    def _admit(self) -> list[Job]:
        """Drop cancelled jobs, size the engine for the jobs that fit, and give waiting jobs their streams."""
        for job in self.active():
            if job.cancelled:
                self._leave(job)
        for job in [job for job in self.waiting if job.cancelled]:
            self.waiting.remove(job)
            self._leave(job)
        wanted = sum(job.width for job in self.active())
        for job in self.waiting:
            if wanted + job.width > self.capacity:
                break
            wanted += job.width
        self._resize(next(size for size in self.buckets if size >= wanted))
        admitted = []
        taken = {row for job in self.running for row in job.rows}
        free = [row for row in range(self.engine.num_streams) if row not in taken]
        while self.waiting and len(free) >= self.waiting[0].width:
            job = self.waiting.popleft()
            job.rows, free = free[:job.width], free[job.width:]
            self.running.append(job)
            admitted.append(job)
        return admitted

    def _resize(self, size: int) -> None:
        """Move the running streams to an engine of size streams (they keep their state)."""
        if size == self.engine.num_streams:
            return
        jobs = self.active()
        engine = self.generator.take_engine(size)
        engine.take_streams(self.engine, [row for job in jobs for row in job.rows])
        self.generator.give_back(self.engine)
        self.engine = engine
        start = 0
        for job in jobs:
            job.rows = list(range(start, start + job.width))
            start += job.width

    def _leave(self, job: Job) -> None:
        if job in self.running:
            self.running.remove(job)
        job.deliver(None)

    def _run(self) -> None:
        while True:
            with self.condition:
                while not self.waiting and not self.active():
                    if self.retired:
                        self.closed = True
                        self.generator.give_back(self.engine)
                        return
                    self.condition.wait()
            try:
                with self.condition:
                    admitted = self._admit()
                self._prime(admitted)
                jobs = self.active()
                if jobs:
                    self._step(jobs)
            except Exception as error:  # never leave a request waiting forever
                logger.exception("generation failed")
                with self.condition:
                    for job in self.active() + list(self.waiting):
                        job.error = error
                        self._leave(job)
                    self.waiting.clear()

    def _prime(self, jobs: list[Job]) -> None:
        """Prime the joining streams, all in one engine call whatever their primes' lengths."""
        rows, primes = [], []
        for job in jobs:
            ids = self.vocab.encode(job.streams.context)
            rows += job.rows
            primes += [ids] * len(job.rows)
        if rows:
            self.engine.prime_rows(rows, primes)

    def _steps(self, jobs: list[Job]) -> int:
        """The next call's length: by engine size (see CHUNK), and no longer than the longest request still needs."""
        needed = max(job.streams.config.length - job.streams.produced for job in jobs)
        return max(1, min(call_length(self.engine.num_streams), needed))

    def _step(self, jobs: list[Job]) -> None:
        size, steps = self.engine.num_streams, self._steps(jobs)
        temperatures = np.zeros(size, np.float32)
        filters: dict = {name: [None] * size for name in sampling.FILTERS}
        uniforms = np.zeros((steps, size))
        for job in jobs:
            temperatures[job.rows] = job.streams.temperatures
            for name, values in filters.items():
                for row in job.rows:
                    values[row] = getattr(job.streams.config, name)
            # Time-major per request, so its draws do not depend on the call lengths (same text alone or batched).
            uniforms[:, job.rows] = job.draws.next(steps)
        # One compiled loop whatever filters the current requests use: joining never waits for a compilation.
        ids = self.engine.sample(steps, temperature=temperatures, uniforms=uniforms, every_filter=True, **filters)
        with self.condition:
            for job in jobs:
                job.streams.add(ids[job.rows])
                for sample in range(job.width):
                    if piece := job.streams.take_ready(sample):
                        job.deliver(Piece(sample, piece))
                if job.streams.done:
                    self._leave(job)
