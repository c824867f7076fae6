"""The compiled generation loop.

:class:`Engine` copies the weights out of a built Keras model (any batch size) and runs the
embedding, the stacked LSTM cells and the output layer itself, inside one compiled TensorFlow
``while_loop`` (XLA by default), carrying (h, c) of every layer and sampling inside the loop, for
``num_streams`` independent streams at once. Python is entered once per chunk of up to
``CHUNK`` steps, never once per character.

Per step, for layer 0 the input projection ``embedding[id] @ kernel + bias`` is a row of a
precomputed (V, 4U) table (a gather instead of a matmul; from 16 streams a column of its
transpose); later layers do one matmul of ``[kernel; recurrent_kernel]^T @ [x; h]``; the gate
math is :mod:`textgen.lstm_step` (weights stored with the candidate block pre-scaled) and XLA
fuses it into a few kernels.

Compiled loops are shared by every engine of the same shapes (one table per process, :func:`_shared`), with the
weights passed as arguments: TensorFlow keeps every function it compiles until the process ends, so loops
compiled per engine, with its weights as constants, grew memory by megabytes at every ``textgen.load`` and
compiled again each time.

The loop runs feature-major: each layer's carried (h, c) is (U, N), so every product has a
(4U, N) output (the output layer's a (V, N) one). On CPU that shape runs faster than the batch-major
(N, 4U) one (1.3x for one stream, a few percent for 64: BENCHMARKS.md, "Against PyTorch"), and the
gates become contiguous row blocks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

import numpy as np

from textgen import lstm_step, sampling

CHUNK = 512  # most steps one compiled call runs; longer requests loop over chunks
_FORCED_BUCKETS = (8, 64, CHUNK)  # padded lengths for teacher-forced calls (few compilations)
_SHARED: dict = {}  # compiled concrete functions, by kind, static options and shapes (see _shared)
_SHARED_LOCK = threading.Lock()  # guards _BUILDING
_BUILDING: dict = {}  # key -> the lock of its one build, when threads (the server's) ask for it at once


def _shared(key, build):
    """The concrete function for key, built (traced and compiled) once per process by build(). A key built already
    never waits for another's build (a server's warm-up traces beside the requests)."""
    if (found := _SHARED.get(key)) is not None:
        return found
    with _SHARED_LOCK:
        lock = _BUILDING.setdefault(key, threading.Lock())
    with lock:
        if key not in _SHARED:
            _SHARED[key] = build()
        return _SHARED[key]


@dataclass(frozen=True)
class Weights:
    """Float32 weights in the layout the loop uses."""

    # Candidate columns pre-scaled by lstm_step.prescale_candidate.
    table: np.ndarray  # (V, 4U): embedding @ kernel_0 + bias_0
    recurrent0_t: np.ndarray  # (4U, U): recurrent kernel of layer 0, transposed
    stacked_t: tuple  # per layer >= 1: ((4U, 2U) [kernel; recurrent_kernel]^T, (4U, 1) bias column)
    dense_kernel: np.ndarray  # (U, V)
    dense_bias: np.ndarray  # (V,)
    # The arrays as tensors, made once for every engine of this model (by table layout: see Engine).
    _tensors: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def tensors(self, table_columns: bool) -> tuple:
        """The weights as the compiled loops take them, in the order _step unpacks them; the table is transposed
        when steps gather its columns, and the output layer is (V, U) with a (V, 1) bias, feature-major like the
        rest of the step."""
        if table_columns not in self._tensors:
            import tensorflow as tf

            arrays = [self.table.T if table_columns else self.table, self.recurrent0_t,
                      *(array for pair in self.stacked_t for array in pair),
                      _f32(self.dense_kernel.T), self.dense_bias[:, None]]
            self._tensors[table_columns] = tuple(tf.constant(array) for array in arrays)
        return self._tensors[table_columns]

    @property
    def vocab_size(self) -> int:
        return self.table.shape[0]

    @property
    def units(self) -> int:
        return self.recurrent0_t.shape[1]

    @property
    def layers(self) -> int:
        return 1 + len(self.stacked_t)


def _f32(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def weights_from_model(model) -> Weights:
    """Read the trained weights of a model built by ``textgen.model.build_model``."""
    import keras

    embedding = np.asarray(model.get_layer("embedding").embeddings, dtype=np.float64)
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    if not lstms:
        raise ValueError("model has no LSTM layer")
    parts = []
    for layer in lstms:
        cell = layer.cell
        activation = getattr(cell.activation, "__name__", "")
        recurrent = getattr(cell.recurrent_activation, "__name__", "")
        if activation != "tanh" or recurrent != "sigmoid" or layer.go_backwards:
            raise ValueError(f"{layer.name}: only tanh/sigmoid forward LSTMs are supported")
        kernel = np.asarray(cell.kernel, dtype=np.float64)
        recurrent_kernel = np.asarray(cell.recurrent_kernel, dtype=np.float64)
        bias = np.asarray(cell.bias, dtype=np.float64) if cell.use_bias else np.zeros(kernel.shape[1])
        parts.append(tuple(lstm_step.prescale_candidate(w) for w in (kernel, recurrent_kernel, bias)))
    dense = model.get_layer("logits")
    kernel0, recurrent0, bias0 = parts[0]
    return Weights(
        table=_f32(embedding @ kernel0 + bias0),
        recurrent0_t=_f32(recurrent0.T),
        stacked_t=tuple((_f32(np.concatenate([k, r], axis=0).T), _f32(b[:, None])) for k, r, b in parts[1:]),
        dense_kernel=_f32(np.asarray(dense.kernel)),
        dense_bias=_f32(np.asarray(dense.bias) if dense.use_bias else np.zeros(embedding.shape[0])),
    )


def _trailing_runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ids (N, T): its last id and how many times that id comes in a row at the end."""
    ids = np.asarray(ids)
    last = ids[:, -1]
    same_from_end = (ids == last[:, None])[:, ::-1]
    run = np.where(same_from_end.all(axis=1), ids.shape[1], np.argmin(same_from_end, axis=1))
    return last.astype(np.int32), run.astype(np.int32)


@dataclass(frozen=True, eq=False)  # (arrays: == would compare them element by element)
class StreamHistory:
    """What the filters that look at a stream's past know of each stream: for the repeat guard
    (sampling.guard_repeats_tf), its last id and how many times in a row that id has come.

    A filter that needs more of the past adds a (num_streams,) field here with its value in empty() and its update in
    after(), and the same update in the sampling loop's body (Engine._sample_function) and in
    exported_graph._generate; joining (restarted) and moving (taken) carry every field without more code."""

    last_id: np.ndarray  # (N,) int32: the last id fed or drawn, -1 before any
    run: np.ndarray  # (N,) int32: how many times in a row last_id has come, counting the end of the prime

    @classmethod
    def empty(cls, streams: int) -> StreamHistory:
        return cls(np.full(streams, -1, np.int32), np.zeros(streams, np.int32))

    def arrays(self) -> tuple:
        return tuple(getattr(self, field.name) for field in fields(self))

    def after(self, ids: np.ndarray) -> StreamHistory:
        """The history once each stream has been fed its row of ids (N, T), fed or drawn."""
        ids = np.asarray(ids)
        last_id, run = _trailing_runs(ids)
        whole = run == ids.shape[1]  # the whole piece repeats one id: it may continue the previous run
        return StreamHistory(last_id, np.where(whole & (last_id == self.last_id), self.run + run, run).astype(np.int32))

    def restarted(self, rows, ids: np.ndarray) -> StreamHistory:
        """The streams in rows start over from their primes ids (len(rows), T); the others keep their history."""
        arrays = [array.copy() for array in self.arrays()]
        for array, fresh in zip(arrays, StreamHistory.empty(len(rows)).after(ids).arrays()):
            array[list(rows)] = fresh
        return StreamHistory(*arrays)

    def taken(self, rows, streams: int) -> StreamHistory:
        """This history's streams rows as streams 0, 1, ... of streams; the rest start empty."""
        rest = StreamHistory.empty(streams - len(rows)).arrays()
        return StreamHistory(*(np.concatenate([mine[list(rows)], empty]) for mine, empty in zip(self.arrays(), rest)))


def _step(weights, ids, hs, cs, gathers_columns: bool):
    """Feed ids (N,) int32 through every layer: return logits (N, V) and the new (U, N) states.

    weights is Engine._weights; a module function, so that the shared compiled loops hold no engine."""
    import tensorflow as tf

    table, recurrent0_t, *stacked, dense_t, dense_bias_column = weights
    new_h, new_c = [], []
    x = None
    for index in range(len(hs)):
        if index == 0:
            xw = tf.gather(table, ids, axis=1) if gathers_columns else tf.transpose(tf.gather(table, ids))
            z = xw + tf.matmul(recurrent0_t, hs[0])
        else:
            kernel_t, bias = stacked[2 * index - 2 : 2 * index]
            z = tf.matmul(kernel_t, tf.concat([x, hs[index]], axis=0)) + bias
        x, c = lstm_step.cell_update(*tf.split(tf.sigmoid(z), lstm_step.GATES, axis=0), cs[index])
        new_h.append(x)
        new_c.append(c)
    # (V, U) @ (U, N), then the small (V, N) transposed: at 32 streams 1.05x the speed of (U, N)^T @ (U, V)
    logits = tf.transpose(tf.matmul(dense_t, x) + dense_bias_column)
    return logits, tuple(new_h), tuple(new_c)


def _split(state):
    """(2L, U, N) -> the L h^T and the L c^T."""
    layers = state.shape[0] // 2
    return tuple(state[i] for i in range(layers)), tuple(state[layers + i] for i in range(layers))


class Engine:
    """Fast generation for ``num_streams`` independent streams sharing one model's weights."""

    def __init__(self, weights: Weights, num_streams: int, *, jit_compile: bool = True):
        import tensorflow as tf

        if num_streams < 1:
            raise ValueError("num_streams must be >= 1")
        self.weights = weights
        self.num_streams = int(num_streams)
        self.vocab_size = weights.vocab_size
        self.units = weights.units
        self.jit_compile = bool(jit_compile)
        self._tf = tf
        # From 16 streams a step gathers its streams' columns of the transposed (4U, V) table: 1.1x the engine's
        # speed at 32-64 streams; fewer streams gather rows and transpose them (1 stream: 0.9x the other way;
        # at 16 and fewer the two were within this machine's noise, so 16 is a midpoint, not a measured edge).
        self._gathers_columns = self.num_streams >= 16
        self._weights = weights.tensors(self._gathers_columns)  # the compiled loops' last arguments
        self._weight_specs = tuple(tf.TensorSpec(tensor.shape, tf.float32) for tensor in self._weights)
        self.reset()

    @classmethod
    def from_model(cls, model, num_streams: int, **kwargs) -> Engine:
        return cls(weights_from_model(model), num_streams, **kwargs)

    # ----------------------------------------------------------------- state

    def reset(self) -> None:
        """Zero the (h, c) state of every layer and forget the kept logits."""
        tf = self._tf
        # one tensor (2L, U, N): h^T of layers 0..L-1, then c^T of layers 0..L-1 (few call arguments)
        self._state = tf.zeros((2 * self.weights.layers, self.units, self.num_streams), tf.float32)
        self._last = None  # (N, V) logits after the last fed id
        self._history = StreamHistory.empty(self.num_streams)

    @property
    def last_logits(self):
        """(num_streams, V) logits after the last fed id, or None before any input."""
        return None if self._last is None else self._last.numpy()

    # ----------------------------------------------------------------- graph pieces

    def _compiled(self, kind, function, specs):
        """function (which must not hold the engine) compiled for specs plus this engine's weights, shared by every
        engine of the same shapes."""
        tf, jit_compile, weight_specs = self._tf, self.jit_compile, self._weight_specs
        shapes = tuple(spec.shape for spec in tf.nest.flatten((specs, weight_specs)))
        key = (kind, jit_compile, self._gathers_columns, shapes)
        return _shared(key, lambda: tf.function(function, jit_compile=jit_compile).get_concrete_function(
            *specs, weight_specs))

    def _state_spec(self):
        return self._tf.TensorSpec((2 * self.weights.layers, self.units, self.num_streams), self._tf.float32)

    def _forced_function(self, bucket: int, ragged: bool):
        """Feed each stream the first fed[n] of its ids (bucket, N), count steps in all: return the (bucket, N, V)
        logits, each stream's logits after the last id it was fed (last where it was fed none) and the state (a stream
        fed none keeps its own). Only a ragged loop looks at fed; the others feed every stream count ids (prime and
        logits: selecting every step's state made a 64-stream feed 7-13% slower at 256 units)."""
        tf = self._tf
        streams, vocab, gathers_columns = self.num_streams, self.vocab_size, self._gathers_columns

        def forced(ids, count, fed, last, state, weights):
            out = tf.TensorArray(tf.float32, size=bucket, element_shape=(streams, vocab))

            def body(t, out, last, hs, cs):
                logits, new_hs, new_cs = _step(weights, ids[t], hs, cs, gathers_columns)
                if not ragged:
                    return t + 1, out.write(t, logits), logits, new_hs, new_cs
                feeding = t < fed  # (N,): the streams whose ids go on this far (primes of other lengths)
                hs, cs = (tuple(tf.where(feeding, new, old) for new, old in zip(pair[0], pair[1]))
                          for pair in ((new_hs, hs), (new_cs, cs)))
                return t + 1, out.write(t, logits), tf.where(feeding[:, None], logits, last), hs, cs

            hs, cs = _split(state)
            _, out, last, hs, cs = tf.while_loop(lambda t, *_: t < count, body, (tf.constant(0), out, last, hs, cs))
            return out.stack(), last, tf.stack(hs + cs)

        specs = (tf.TensorSpec((bucket, streams), tf.int32), tf.TensorSpec((), tf.int32),
                 tf.TensorSpec((streams,), tf.int32), tf.TensorSpec((streams, vocab), tf.float32), self._state_spec())
        return self._compiled(("forced", ragged), forced, specs)

    def _sample_function(self, greedy_only: bool, used: frozenset):
        """Sample count ids per stream, feeding each back; the filters in use (names of sampling.FILTERS) are fixed
        at trace time, the others are left out of the loop."""
        tf = self._tf
        streams, vocab, gathers_columns = self.num_streams, self.vocab_size, self._gathers_columns

        def sample(logits, uniforms, count, temperature, filters, history, state, weights):
            out = tf.TensorArray(tf.int32, size=CHUNK, element_shape=(streams,))
            chosen = {name: filters[name] if name in used else None for name in sampling.RULE_FILTERS}
            use_repeat, max_repeat = "max_repeat" in used, filters["max_repeat"]

            def body(t, out, logits, hs, cs, history):
                last_id, run = history
                if use_repeat:
                    logits = sampling.guard_repeats_tf(logits, last_id, run, max_repeat)
                if greedy_only:
                    ids = tf.argmax(logits, axis=1, output_type=tf.int32)
                else:
                    ids = sampling.choose_tf(logits, uniforms[t], temperature, **chosen)
                if use_repeat:  # the runs are followed inside the loop only when a guard needs them
                    run = sampling.follow_runs_tf(ids, last_id, run)
                logits, hs, cs = _step(weights, ids, hs, cs, gathers_columns)
                return t + 1, out.write(t, ids), logits, hs, cs, (ids, run)

            hs, cs = _split(state)
            _, out, logits, hs, cs, _ = tf.while_loop(
                lambda t, *_: t < count, body, (tf.constant(0), out, logits, hs, cs, history))
            return out.stack(), logits, tf.stack(hs + cs)

        per_stream = {name: tf.TensorSpec((streams,), rule.dtype) for name, rule in sampling.FILTER_RULES.items()}
        specs = (tf.TensorSpec((streams, vocab), tf.float32), tf.TensorSpec((CHUNK, streams), tf.float32),
                 tf.TensorSpec((), tf.int32), tf.TensorSpec((streams,), tf.float32), per_stream,
                 tuple(tf.TensorSpec(array.shape, array.dtype) for array in self._history.arrays()),
                 self._state_spec())
        return self._compiled(("sample", greedy_only, tuple(sorted(used))), sample, specs)

    # ----------------------------------------------------------------- public API

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim == 1 and self.num_streams == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[0] != self.num_streams or ids.shape[1] < 1:
            raise ValueError(f"ids must have shape ({self.num_streams}, T) with T >= 1, got {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError("ids must be integers")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"ids must lie in [0, {self.vocab_size})")
        return ids.astype(np.int32)

    def prime(self, ids) -> None:
        """Zero the state, feed ids (num_streams, T); keep the state and the logits after the last id."""
        ids = self._check_ids(ids)
        self.reset()
        self._feed(ids, keep_logits=False)

    def prime_rows(self, rows, primes) -> None:
        """Zero the state of the streams in rows and feed each its prime, one array of ids per row (any lengths, at
        least one id each: a (len(rows), T) array is one of T each); the other streams keep their state and logits
        (streams joining a running batch). One call feeds them all, however their lengths differ: a call per length
        kept 16 requests with primes of ~4,000 characters, each a little shorter, and every running stream, waiting
        for 40 seconds on a 2 x 512 model."""
        tf = self._tf
        primes = [np.asarray(ids) for ids in primes]
        if len(primes) != len(rows) or any(ids.ndim != 1 or len(ids) < 1 or not np.issubdtype(ids.dtype, np.integer)
                                           or ids.min() < 0 or ids.max() >= self.vocab_size for ids in primes):
            raise ValueError(f"primes must be one array of ids in [0, {self.vocab_size}) per row, each of >= 1 id")
        fed = np.zeros((self.num_streams, max(map(len, primes))), np.int32)
        lengths = np.zeros(self.num_streams, np.int32)
        for row, ids in zip(rows, primes):
            fed[row, :len(ids)], lengths[row] = ids, len(ids)
        joining = tf.constant(lengths > 0)[None, None, :]
        self._state = tf.where(joining, tf.zeros_like(self._state), self._state)
        self._feed(fed, keep_logits=False, lengths=lengths)
        for row, ids in zip(rows, primes):
            self._history = self._history.restarted([row], ids[None, :])

    def take_streams(self, source: "Engine", rows) -> None:
        """Continue source's streams rows as this engine's streams 0, 1, ...; the rest start idle (zero)."""
        tf = self._tf
        if len(rows) > self.num_streams:
            raise ValueError(f"{len(rows)} streams do not fit in {self.num_streams}")
        padding = self.num_streams - len(rows)
        rows = tf.constant(list(rows), tf.int32)
        self._state = tf.pad(tf.gather(source._state, rows, axis=2), [[0, 0], [0, 0], [0, padding]])
        last = source._last if source._last is not None else tf.zeros((source.num_streams, self.vocab_size))
        self._last = tf.pad(tf.gather(last, rows, axis=0), [[0, padding], [0, 0]])
        self._history = source._history.taken(rows.numpy(), self.num_streams)

    def warm_up(self) -> None:
        """Compile ahead of use what a server's batcher runs on an engine of this size (priming at each padded
        length, sampling with every filter); the state is then reset."""
        for bucket in _FORCED_BUCKETS:
            self.prime_rows([0], [np.zeros(bucket, np.int32)])
        self.sample(1, temperature=np.ones(self.num_streams, np.float32), uniforms=np.zeros((1, self.num_streams)),
                    every_filter=True)
        self.reset()

    def logits(self, ids) -> np.ndarray:
        """Continue from the current state, feed ids (num_streams, T); return (num_streams, T, V)."""
        return self._feed(self._check_ids(ids), keep_logits=True)

    def _feed(self, ids: np.ndarray, keep_logits: bool, lengths: np.ndarray = None):
        """Feed ids (num_streams, T), or only each stream's first lengths[n] (prime_rows: then the caller keeps the
        history)."""
        tf = self._tf
        pieces = []
        last = self._last if self._last is not None else tf.zeros((self.num_streams, self.vocab_size))
        for start in range(0, ids.shape[1], CHUNK):
            part = ids[:, start : start + CHUNK]
            count = part.shape[1]
            bucket = next(b for b in _FORCED_BUCKETS if b >= count)
            padded = np.zeros((bucket, self.num_streams), np.int32)
            padded[:count] = part.T
            fed = np.full(self.num_streams, count, np.int32) if lengths is None else np.clip(lengths - start, 0, count)
            fn = self._forced_function(bucket, ragged=lengths is not None)
            out, last, self._state = fn(tf.constant(padded), tf.constant(count, tf.int32), tf.constant(fed, tf.int32),
                                        last, self._state, self._weights)
            if lengths is None:
                self._history = self._history.after(part)
            if keep_logits:
                pieces.append(out.numpy()[:count])
        self._last = last
        if keep_logits:
            return np.concatenate(pieces, axis=0).transpose(1, 0, 2)
        return None

    def sample(self, length, *, temperature, rng: np.random.Generator = None, uniforms=None,
               every_filter: bool = False, **filters) -> np.ndarray:
        """Generate (num_streams, length) ids, continuing the state.

        ``temperature`` and the ``filters``, by their names in sampling.FILTERS (``top_k``, ``top_p``, ``min_p``),
        are one value for every stream or one per stream (a filter of None leaves that stream unfiltered);
        a filter not given is off. ``max_repeat`` (one value, or one per
        stream; None or 0: off) keeps a stream from producing one character more than that many times
        in a row, counting the end of its prime. ``every_filter`` runs the one compiled loop that applies
        every filter (unused ones with values that keep everything), so that changing which filters are in
        use never compiles another one (the server's batcher). The uniforms come from ``rng``, drawn
        time-major (``rng.random((length, num_streams))``), so splitting one request into chunks with
        the same generator gives the same ids; or they are given as ``uniforms`` (length, num_streams).
        """
        tf = self._tf
        if self._last is None:
            raise RuntimeError("call prime() (or logits()) before sample()")
        length = int(length)
        if length < 0:
            raise ValueError("length must be >= 0")
        streams = self.num_streams
        temp = sampling.temperatures(temperature, streams)
        filters = sampling.StreamFilters.of(streams, self.vocab_size, **filters)
        drawn = rng.random((length, streams)) if uniforms is None else np.asarray(uniforms)
        if drawn.shape != (length, streams):
            raise ValueError(f"uniforms must have shape ({length}, {streams}), got {drawn.shape}")
        uniforms = sampling.clamp_uniforms(drawn)
        greedy_only = bool(np.all(temp == 0)) and not every_filter
        used = filters.in_use(self.vocab_size) - (set(sampling.RULE_FILTERS) if greedy_only else set())
        fn = self._sample_function(greedy_only, frozenset(sampling.FILTERS) if every_filter else used)
        options = (tf.constant(temp), filters.tensors())
        padded = np.zeros((CHUNK, streams), np.float32)
        result = np.empty((streams, length), np.int64)
        for start in range(0, length, CHUNK):
            count = min(CHUNK, length - start)
            padded[:count] = uniforms[start : start + count]
            ids, self._last, self._state = fn(self._last, tf.constant(padded), tf.constant(count, tf.int32),
                                              *options, tuple(map(tf.constant, self._history.arrays())),
                                              self._state, self._weights)
            result[:, start : start + count] = ids.numpy()[:count].T
            self._history = self._history.after(result[:, start : start + count])
        return result
