"""textgen.request_batcher: concurrent requests as streams of one compiled engine, driven directly (no server)."""

import threading

import pytest

from textgen.config import SampleConfig


@pytest.fixture(scope="module")
def generator(trained_run):
    from textgen.generate import Generator

    return Generator.load(trained_run["run_dir"])


def collect(batcher, config):
    """Submit config; returns (the job, its pieces' texts by sample, an event set when it is over)."""
    texts, over = {}, threading.Event()

    def deliver(piece):
        if piece is None:
            over.set()
        else:
            texts[piece.sample] = texts.get(piece.sample, "") + piece.text

    return batcher.submit(config, deliver), texts, over


def test_requests_batched_together_each_get_the_text_they_get_alone(generator):
    """Each request's seed, temperature and filters are its own, whatever the other streams of the batch use."""
    from textgen.request_batcher import Batcher

    # Hot enough that the period model draws other characters, and each filter cuts some of them.
    configs = [SampleConfig(prime="ab", length=200, temperature=(5.0,), top_k=3, seed=1, num_samples=2),
               SampleConfig(prime="g", length=150, temperature=(4.0, 6.0), top_p=0.7, seed=2),
               SampleConfig(prime="c", length=120, temperature=(5.0,), min_p=0.2, max_repeat=1, seed=3),
               SampleConfig(prime="d", length=90, temperature=(3.0,), seed=4)]
    alone = [[sample.text for sample in generator.samples(config)] for config in configs]
    batcher = Batcher(generator, (1, 4, 8))
    try:
        jobs = [collect(batcher, config) for config in configs]
        for job, _, over in jobs:
            assert over.wait(60) and job.error is None
        for (_, texts, _), expected in zip(jobs, alone):
            prime = texts.pop(None)
            assert [prime + texts[sample] for sample in sorted(texts)] == expected
    finally:
        batcher.retire()
    assert len(set(alone[0])) == 2 and len(set(alone[1])) == 2  # random draws: the comparison can fail


def test_requests_with_primes_of_different_lengths_are_primed_in_one_engine_call(generator, monkeypatch):
    """A call per prime length: 16 requests with primes of ~4,000 characters, each a little shorter, kept every
    stream of a 2 x 512 model waiting 40 s."""
    from textgen.engine import Engine
    from textgen.request_batcher import Batcher

    configs = [SampleConfig(prime=prime, length=30, temperature=(5.0,), seed=seed)
               for seed, prime in enumerate(("ab", "gfedc", "c" * 40))]
    alone = [generator.samples(config)[0].text for config in configs]
    calls, prime_rows = [], Engine.prime_rows
    monkeypatch.setattr(Engine, "prime_rows", lambda engine, rows, primes: calls.append(sorted(map(len, primes)))
                        or prime_rows(engine, rows, primes))
    batcher = Batcher(generator, (1, 4, 8))
    try:
        with batcher.condition:  # its thread admits all three at once
            jobs = [collect(batcher, config) for config in configs]
        for job, _, over in jobs:
            assert over.wait(60) and job.error is None
        assert [texts[None] + texts[0] for _, texts, _ in jobs] == alone
    finally:
        batcher.retire()
    assert calls == [[2, 6, 41]]  # (each read after the start symbol, a: "ab" starts with it)


def test_requests_joining_running_ones_take_free_streams_and_each_keeps_its_text(generator, monkeypatch):
    """A request joins one that is generating (the engine grows from 1 to 4 streams), then another joins both
    without a resize: it must take streams that no running request holds, and each keeps the text it gets alone."""
    from textgen.request_batcher import Batcher
    from textgen.engine import Engine

    configs = [SampleConfig(prime="a", length=900, temperature=(5.0,), seed=seed) for seed in (1, 2, 3)]
    alone = [generator.samples(config)[0].text for config in configs]
    arrived, tickets, sizes, free = threading.Semaphore(0), threading.Semaphore(0), [], threading.Event()
    original = Engine.sample

    def gated(self, *args, **kwargs):  # each call waits for the test's ticket until the last request is in
        sizes.append(self.num_streams)
        if not free.is_set():
            arrived.release()
            assert tickets.acquire(timeout=60)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "sample", gated)
    batcher = Batcher(generator, (1, 4))
    try:
        jobs = [collect(batcher, configs[0])]
        assert arrived.acquire(timeout=60)  # the first request's first call is about to run
        jobs.append(collect(batcher, configs[1]))
        tickets.release()
        assert arrived.acquire(timeout=60)  # the next call runs both
        jobs.append(collect(batcher, configs[2]))
        free.set()
        tickets.release()
        for job, _, over in jobs:
            assert over.wait(60) and job.error is None
    finally:
        free.set()
        tickets.release()
        batcher.retire()
    assert sizes[:3] == [1, 4, 4]  # the third request joined the two running ones without a resize
    assert [texts[None] + texts[0] for _, texts, _ in jobs] == alone
    assert len(set(alone)) == 3


def test_a_lone_request_runs_long_engine_calls_and_no_longer_than_it_needs(generator, monkeypatch):
    from textgen.request_batcher import LONE_CHUNK, Batcher
    from textgen.engine import Engine

    calls = []
    original = Engine.sample

    def recorded(self, *args, **kwargs):
        calls.append((self.num_streams, args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "sample", recorded)
    batcher = Batcher(generator, (1, 4))
    try:
        job, texts, over = collect(batcher, SampleConfig(prime="a", length=2 * LONE_CHUNK + 40, temperature=(0.8,),
                                                         seed=4))
        assert over.wait(60) and job.error is None
    finally:
        batcher.retire()
    assert len(texts[None] + texts[0]) == 2 * LONE_CHUNK + 41
    assert calls == [(1, LONE_CHUNK), (1, LONE_CHUNK), (1, 40)]


def test_a_retired_batcher_finishes_its_requests_then_refuses_new_ones(generator):
    from textgen.request_batcher import Batcher, BatcherClosed

    batcher = Batcher(generator, (1, 4))
    job, texts, over = collect(batcher, SampleConfig(prime="a", length=600, temperature=(1.0,), seed=1))
    batcher.retire()
    assert over.wait(60) and job.error is None and len(texts[None] + texts[0]) == 601
    batcher.thread.join(10)
    assert not batcher.thread.is_alive()
    with pytest.raises(BatcherClosed):
        batcher.submit(SampleConfig(length=5), lambda piece: None)
    assert generator.take_engine(batcher.engine.num_streams) is batcher.engine  # given back for the next batcher


def test_a_warmed_up_batcher_compiles_nothing_when_requests_grow_it(generator, monkeypatch):
    """A server's batcher compiled each engine size on first use: every stream of the run waited 1.5-2.5 s, and 40
    clients arriving at a fresh server waited 4.6-7.2 s for their first character."""
    from textgen import engine as engine_module
    from textgen.request_batcher import Batcher

    monkeypatch.setattr(engine_module, "_SHARED", {})  # as in a fresh process
    batcher = Batcher(generator, (1, 4, 8), warm_up=True)
    try:
        batcher.warming.join(120)
        assert not batcher.warming.is_alive()
        built, shared = [], engine_module._shared
        monkeypatch.setattr(engine_module, "_shared", lambda key, build: shared(
            key, lambda: built.append(key) or build()))
        configs = [SampleConfig(prime=prime, length=40, temperature=(1.0,), seed=seed, num_samples=samples)
                   for seed, (prime, samples) in enumerate([("a", 1), ("abcdefg" * 5, 2), ("gf" * 100, 5)])]
        jobs = [collect(batcher, config) for config in configs]
        for job, texts, over in jobs:
            assert over.wait(60) and job.error is None and len(texts) == job.width + 1
    finally:
        batcher.retire()
    assert built == []
