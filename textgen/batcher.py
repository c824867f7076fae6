"""Batcher: many generation requests on one compiled engine at once, joining and leaving as they come.

A request takes one stream per sample, at a chunk boundary; it is primed on its own streams while the
others keep their state, and it leaves when its samples are done or its client has gone. The compiled
engine is sized to the streams in use, by buckets (1, 4, 8, 16, 32, 64 streams by default): when
requests join or leave, the running streams move to an engine of the fitting size and go on where they
were, so one client does not pay for 64 streams and 64 clients share one computation. Each request draws its uniforms
from its own generator (seeded by its seed, time-major over its streams), and a stream's arithmetic
does not depend on the other streams' values, so a seeded request gives the same text alone or batched
(up to float rounding between engine sizes, far below what changes a sampled character in practice).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections import deque
from typing import Callable, Optional

import numpy as np

from textgen.config import SampleConfig
from textgen.generate import _start_symbol, _stop_cut, prepare_prime

logger = logging.getLogger("textgen")
CHUNK = 32  # characters per engine call: how often requests can join and streams are delivered
BUCKETS = (1, 4, 8, 16, 32, 64)  # engine sizes; the largest is how many streams run at once


class Job:
    """One request's samples: their streams, text so far, and how the caller gets the result."""

    def __init__(self, config: SampleConfig, prime: str, deliver: Optional[Callable[[Optional[str]], None]] = None):
        self.config, self.prime = config, prime
        # Called (from the batcher's thread) with each piece of the first stream, then None at the end;
        # by default the pieces go to a queue.Queue.
        self.deliver = deliver or self._queue_piece
        self.temperatures = [t for t in config.temperature for _ in range(config.num_samples)]
        self.rng = np.random.default_rng(secrets.randbits(63) if config.seed is None else config.seed)
        self.rows: list[int] = []
        self.texts = [""] * len(self.temperatures)
        self.cuts: list[Optional[int]] = [None] * len(self.temperatures)
        self.produced = 0
        self.emitted = 0  # characters of the first stream already handed out as pieces
        self.pieces: queue.Queue = queue.Queue()  # the default destination of deliver
        self.finished = threading.Event()
        self.cancelled = False
        self.error: Optional[Exception] = None

    def _queue_piece(self, piece: Optional[str]) -> None:
        self.pieces.put(piece)

    @property
    def streams(self) -> int:
        return len(self.temperatures)

    def final_texts(self) -> list[tuple[str, bool]]:
        """(text without the prime, stopped) per stream: cut at length, then before the stop string."""
        results = []
        for text in self.texts:
            text = text[:self.config.length]
            cut = _stop_cut(text, self.config.stop, 0)
            results.append((text if cut is None else text[:cut], cut is not None))
        return results

    def cancel(self) -> None:
        self.cancelled = True


class Batcher:
    """The shared engine of one run and the thread that drives it."""

    def __init__(self, generator, buckets: tuple = BUCKETS):
        self.generator = generator
        self.vocab = generator.vocab
        self.buckets = tuple(sorted(buckets))
        self.capacity = self.buckets[-1]
        self.engine = generator.engine(self.buckets[0])
        self.engine.reset()
        self.slots: list[Optional[Job]] = [None] * self.engine.num_streams
        self.waiting: deque = deque()
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="textgen-batcher", daemon=True)
        self.thread.start()

    def submit(self, config: SampleConfig, deliver: Optional[Callable[[Optional[str]], None]] = None) -> Job:
        """Queue a request (validated here, in the caller's thread, so errors reach it directly); see Job
        for deliver."""
        config.validate()
        if config.num_samples * len(config.temperature) > self.capacity:
            raise ValueError(f"at most {self.capacity} samples per request")
        job = Job(config, prepare_prime(config.prime, self.vocab, config.skip_unknown, logger.warning), deliver)
        if job.prime:
            job.deliver(job.prime)
        with self.condition:
            self.waiting.append(job)
            self.condition.notify()
        return job

    def active(self) -> list[Job]:
        return list(dict.fromkeys(job for job in self.slots if job is not None))

    def _admit(self) -> list[Job]:
        """Drop cancelled jobs, size the engine for the jobs that fit, and give waiting jobs their streams."""
        for job in self.active():
            if job.cancelled:
                self._leave(job)
        while self.waiting and self.waiting[0].cancelled:
            self._leave(self.waiting.popleft())
        wanted = sum(job.streams for job in self.active())
        for job in self.waiting:
            if wanted + job.streams > self.capacity:
                break
            wanted += job.streams
        self._resize(next(size for size in self.buckets if size >= wanted))
        admitted = []
        while self.waiting:
            job = self.waiting[0]
            free = [row for row, slot in enumerate(self.slots) if slot is None]
            if job.cancelled:
                self._leave(self.waiting.popleft())
                continue
            if len(free) < job.streams:
                break
            self.waiting.popleft()
            job.rows = free[:job.streams]
            for row in job.rows:
                self.slots[row] = job
            admitted.append(job)
        return admitted

    def _resize(self, size: int) -> None:
        """Move the running streams to an engine of size streams (they keep their state)."""
        if size == self.engine.num_streams:
            return
        jobs = self.active()
        rows = [row for job in jobs for row in job.rows]
        engine = self.generator.engine(size)
        engine.take_streams(self.engine, rows)
        self.engine, self.slots = engine, [None] * size
        start = 0
        for job in jobs:
            job.rows = list(range(start, start + job.streams))
            start += job.streams
            for row in job.rows:
                self.slots[row] = job

    def _leave(self, job: Job) -> None:
        for row in job.rows:
            self.slots[row] = None
        job.finished.set()
        job.deliver(None)

    def _run(self) -> None:
        while True:
            with self.condition:
                while not self.waiting and not self.active():
                    self.condition.wait()
                admitted = self._admit()
            try:
                self._prime(admitted)
                jobs = self.active()
                if jobs:
                    self._step(jobs)
            except Exception as error:  # never leave a request waiting forever
                logger.exception("generation failed")
                with self.condition:
                    for job in self.active():
                        job.error = error
                        self._leave(job)

    def _prime(self, jobs: list[Job]) -> None:
        """Prime the joining streams, one engine call per prime length."""
        by_length: dict = {}
        for job in jobs:
            ids = self.vocab.encode(job.prime or _start_symbol(self.vocab))
            for row in job.rows:
                by_length.setdefault(len(ids), []).append((row, ids))
        for pairs in by_length.values():
            self.engine.prime_rows([row for row, _ in pairs], np.stack([ids for _, ids in pairs]))

    def _step(self, jobs: list[Job]) -> None:
        size = self.engine.num_streams
        temperatures = np.zeros(size, np.float32)
        top_k: list = [None] * size
        top_p: list = [None] * size
        min_p: list = [None] * size
        max_repeat: list = [None] * size
        uniforms = np.zeros((CHUNK, size))
        for job in jobs:
            temperatures[job.rows] = job.temperatures
            for row in job.rows:
                top_k[row], top_p[row], min_p[row] = job.config.top_k, job.config.top_p, job.config.min_p
                max_repeat[row] = job.config.max_repeat
            uniforms[:, job.rows] = job.rng.random((CHUNK, job.streams))
        ids = self.engine.sample(CHUNK, temperature=temperatures, top_k=top_k, top_p=top_p, min_p=min_p,
                                 max_repeat=max_repeat, uniforms=uniforms)
        with self.condition:
            for job in jobs:
                self._deliver(job, ids)

    def _deliver(self, job: Job, ids: np.ndarray) -> None:
        length, stop = job.config.length, job.config.stop
        for index, row in enumerate(job.rows):
            if job.cuts[index] is None:
                before = len(job.texts[index])
                job.texts[index] += self.vocab.decode(ids[row])
                job.cuts[index] = _stop_cut(job.texts[index][:length], stop, before)
        job.produced += CHUNK
        done = job.produced >= length or all(cut is not None for cut in job.cuts)
        text, cut = job.texts[0][:length], job.cuts[0]
        if done:
            ready = len(job.final_texts()[0][0])
        else:  # hold back what could be the start of the stop string until it is decided
            ready = cut if cut is not None else len(text) - (len(stop) - 1 if stop else 0)
        if ready > job.emitted:
            job.deliver(text[job.emitted:ready])
            job.emitted = ready
        if done:
            self._leave(job)
