"""A drop-in ``keras.layers.LSTM`` whose training step runs near matmul speed on CPU.

The stock Keras 3 LSTM uses cuDNN on GPU, but on CPU it falls back to a generic
``backend.rnn`` loop: every time step recomputes ``x_t @ kernel`` and autodiff of
the ``while_loop`` accumulates the weight gradients one small ``(B, .) x (B, 4U)``
product per step. :class:`FastLSTM` keeps the same constructor, weights, config
and stateful behaviour and only replaces ``inner_loop`` on the fast path:

forward
    one ``(T*B, in) @ (in, 4U)`` input projection for the whole window, then a
    ``tf.while_loop`` over time doing only the recurrent product
    ``recurrent_kernel^T @ h^T`` (the (4U, B) result is the faster orientation on
    CPU) plus the gate math per step (time-major internally, so per-step slices are
    contiguous; compiled loops of 512 units and more carry h and c feature-major,
    (U, B): see :func:`_feature_major`);
backward (``tf.custom_gradient``)
    the reverse recurrence does only the product with ``recurrent_kernel^T`` plus
    the gate math per step; ``dz`` for all steps is stacked and the weight gradients are
    single large matmuls after the loop (``dKernel = X^T dZ``,
    ``dRecurrent = H_prev^T dZ``, ``dBias = sum dZ`` (folded into the
    ``dKernel`` matmul as a ones column), ``dX = dZ kernel^T``).
    Gradients for the initial ``h`` and ``c`` are returned too.

first layer (``read_ids_from``)
    when the layer reads the token ids that its input embeds, the input projection is
    a row gather from the (vocab, 4U) table ``embeddings @ kernel``, and the backward
    sums dz per token instead of the two large matmuls for dKernel and dX: a third
    fewer FLOPs in the reference model (1 x 512, embedding 256). It applies without
    input dropout and when the table is smaller than the window.

In float32 training, the forward and backward ``while_loop`` s are compiled by XLA
(``jit_compile``, the loops alone): it fuses each step's gate arithmetic and removes the
per-op dispatch, which small models are dominated by (training 1.12x faster at 1 x 128,
1.2x at 1 x 256, 1.08x at 1 x 512 on an AVX2 CPU; BENCHMARKS.md). The large matmuls
around the loops stay on oneDNN, as do the bfloat16 loops.

Input ``dropout`` is applied like the stock layer's cuDNN path: one mask per
(batch, feature) from ``cell.get_dropout_mask``, shared by all time steps,
training only. (The stock CPU path caches that same mask for every step, so
under the same seed both layers compute the same thing.)

``matmul_dtype="bfloat16"`` (training only) feeds every matmul of the fused path
bfloat16 operands: some CPUs with AVX512_BF16 or AMX run those much faster through
oneDNN (a Zen 4: 1.6x), others do not (an Intel Xeon without AMX: 0.55-0.86x;
``session.bfloat16_speedup`` times it). Products are cast back to float32 straight away, so the gate math,
the cell state, the carried (h, c) and the weights stay float32 (mixed precision).
Inference (``training=False``: validation, eval) stays float32.

Anything else (non-TensorFlow backend, a visible GPU, a mask, recurrent dropout,
non-default activations, no bias, ``go_backwards``, ``unroll``, non-float32
compute, ``use_cudnn=True``) falls back to ``keras.layers.LSTM.inner_loop``.
"""

from __future__ import annotations

import functools

import keras
from keras import activations

from textgen import lstm_step, native_loops

def _is_activation(fn, name: str) -> bool:
    if fn is getattr(activations, name, None) or fn is getattr(keras.ops, name, None):
        return True
    import tensorflow as tf

    return fn in (getattr(tf, name), getattr(tf.math, name), getattr(tf.nn, name))


def gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


@keras.saving.register_keras_serializable(package="textgen")
class FastLSTM(keras.layers.LSTM):
    """``keras.layers.LSTM`` with a fused CPU training path (see module docstring).

    Same constructor, weights (``cell.kernel`` (in, 4U), ``cell.recurrent_kernel``
    (U, 4U), ``cell.bias`` (4U,), gate order i, f, c, o) and config as the stock
    layer, so weights move freely between the two. ``matmul_dtype`` ("float32" or
    "bfloat16") is the operand type of the fused training path's matmuls.
    """

    def __init__(self, units, matmul_dtype: str = "float32", **kwargs):
        super().__init__(units, **kwargs)
        if matmul_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"matmul_dtype must be 'float32' or 'bfloat16', not {matmul_dtype!r}")
        self.matmul_dtype = matmul_dtype
        self._embedding_table = None  # read_ids_from: a function returning the embedding variable
        self._ids = None  # the ids of the call in progress, for inner_loop (RNN.call does not pass them on)

    def get_config(self):
        return {**super().get_config(), "matmul_dtype": self.matmul_dtype}

    def fast_path_applies(self, sequences, mask=None) -> bool:
        """Whether :meth:`inner_loop` will take the fused path for these inputs."""
        if keras.backend.backend() != "tensorflow":
            return False
        cell = self.cell
        if (
            mask is not None
            or self.go_backwards
            or self.unroll
            or self.use_cudnn is True
            or cell.recurrent_dropout
            or not cell.use_bias
            or (cell.dropout and getattr(cell, "dropout_mask_count", None) is not None)
        ):
            return False
        if not (_is_activation(cell.activation, "tanh") and _is_activation(cell.recurrent_activation, "sigmoid")):
            return False
        if keras.backend.standardize_dtype(sequences.dtype) != "float32" or cell.variable_dtype != "float32":
            return False
        if gpu_visible():
            return False
        return True

    def read_ids_from(self, embedding) -> None:
        """Let this first layer compute its input projection from the token ids (see :meth:`call`'s ``ids``).

        ``embedding(ids) @ kernel`` equals a row gather from the small (vocab, 4U) table
        ``embedding.embeddings @ kernel``, which removes the window's input projection and two of the backward's
        three large matmuls (the kernel's and the input's gradients): a third of the reference model's
        training FLOPs. The embedding then gets its gradient from this layer, as a dense (vocab, E) tensor.
        """
        # A function, not the layer itself: a layer held as an attribute would be tracked and saved a second
        # time under this one, and weight files would stop matching the stock model's.
        self._embedding_table = lambda: embedding.embeddings

    def call(self, sequences, initial_state=None, mask=None, training=False, ids=None):
        """The stock ``call``; ``ids`` are the tokens that ``sequences`` embeds (:meth:`read_ids_from`)."""
        self._ids = ids
        try:
            return super().call(sequences, initial_state=initial_state, mask=mask, training=training)
        finally:
            self._ids = None

    def _gathers_inputs(self, sequences, training) -> bool:
        """Whether the input projection is a gather from the (vocab, 4U) table: the layer reads ids, no input
        dropout is drawn (its mask is per stream, so a table per stream would cost more than it saves), and
        the table is smaller than the window."""
        if self._ids is None or self._embedding_table is None:
            return False
        if training and self.cell.dropout:
            return False
        batch, steps = sequences.shape[0], sequences.shape[1]
        return batch is not None and steps is not None and 2 * self._embedding_table().shape[0] <= batch * steps

    def inner_loop(self, sequences, initial_state, mask, training=False):
        flat_mask = mask[0] if isinstance(mask, (list, tuple)) else mask
        if not self.fast_path_applies(sequences, flat_mask):
            return super().inner_loop(sequences, initial_state, mask, training=training)
        import tensorflow as tf

        # With stateful=True these are the state variables themselves, which RNN.call
        # overwrites with the final state right after this returns: snapshot them, or
        # the backward pass would read the *final* state as h_0 / c_0.
        h0 = tf.identity(tf.convert_to_tensor(initial_state[0]))
        c0 = tf.identity(tf.convert_to_tensor(initial_state[1]))
        operand_dtype = tf.as_dtype(self.matmul_dtype) if training else tf.float32
        width = _row_width(lstm_step.GATES * self.units, _compiles_loops(operand_dtype, training))
        if self._gathers_inputs(sequences, training):
            projection = _TableProjection(width, tf.transpose(tf.cast(self._ids, "int32")))
            source = tf.convert_to_tensor(self._embedding_table().value)
        else:
            projection = _DenseProjection(width)
            source = sequences
            if training and 0.0 < self.cell.dropout < 1.0:
                dp_mask = self.cell.get_dropout_mask(sequences[:, 0, :])
                source = source * tf.expand_dims(dp_mask, 1)
            source = tf.transpose(source, [1, 0, 2])
        kernel = tf.convert_to_tensor(self.cell.kernel.value)
        recurrent = tf.convert_to_tensor(self.cell.recurrent_kernel.value)
        bias = tf.convert_to_tensor(self.cell.bias.value)
        if training:
            outputs_tm, h, c = _lstm_with_grad(projection, source, h0, c0, kernel, recurrent, bias, operand_dtype)
        else:
            xw = projection.forward(source, kernel, bias, operand_dtype)
            outputs_tm, h, c = _lstm_forward(xw, h0, c0, recurrent, save=False)
        outputs = tf.transpose(outputs_tm, [1, 0, 2])
        return h, outputs, [h, c]


# Keras names a layer's group in .weights.h5 files after the snake-cased class name
# ("layers/lstm/cell/vars/0"). Reporting the stock name keeps weight files interchangeable
# in both directions with keras.layers.LSTM models (existing checkpoints included). The
# serialization name registered above stays "textgen>FastLSTM"; __qualname__ is unchanged.
FastLSTM.__name__ = "LSTM"


# --------------------------------------------------------------------------------------
# TensorFlow kernels (time-major: x_tm is (T, B, in)).


def _materialized_transpose(matrix):
    """``matrix^T`` as a real row-major tensor.

    Grappler's arithmetic optimizer rewrites ``matmul(a, transpose(b))`` into
    ``matmul(a, b, transpose_b=True)`` (even through an Identity), and the transposed-B
    matmul is the slow one on CPU: 43 vs 32 ms for dX at the reference size. A Snapshot
    between them keeps the transpose.
    """
    import tensorflow as tf

    return tf.raw_ops.Snapshot(input=tf.transpose(matrix))


def _compiles_loops(operand_dtype, training: bool) -> bool:
    """Whether the recurrence loops run compiled by XLA: the float32 training loops (see :func:`_compiled`)."""
    import tensorflow as tf

    return training and tf.as_dtype(operand_dtype) == tf.float32


def _row_width(gates: int, compiled: bool) -> int:
    """The width of the z rows (xw, dz): ``gates`` (4U), plus 16 zero columns when the loops are ``compiled``
    and rows of 4U float32 are a multiple of 4 KB (U = 256, 512, 768, ...).

    With that power-of-two stride the window's large (., 4U) matmuls lose a quarter of their speed to cache
    aliasing: on a Zen 3 CPU (AVX2), ``x @ kernel`` and ``X^T dZ`` at 4U = 2048 run at ~105 GFLOP/s, and at
    2064 columns at ~140-150 (BENCHMARKS.md, "Against PyTorch: where the training time goes"). Compiled loops
    slice the pad off inside their fused step; uncompiled ones (inference, bfloat16) would pay a slice op per step.
    """
    return gates + 16 if compiled and gates % 1024 == 0 else gates


def _pad_columns(tensor, width: int):
    """``tensor`` with zero columns appended to its last axis up to ``width``."""
    import tensorflow as tf

    missing = width - tensor.shape[-1]
    if not missing:
        return tensor
    return tf.pad(tensor, [[0, 0]] * (tensor.shape.rank - 1) + [[0, missing]])


def _matmul(a, b, operand_dtype, **kwargs):
    """``a @ b`` with operands cast to ``operand_dtype``, product back in float32 (the state's dtype)."""
    import tensorflow as tf

    return tf.cast(tf.matmul(tf.cast(a, operand_dtype), tf.cast(b, operand_dtype), **kwargs), "float32")


class _DenseProjection:
    """The input projection as one (T*B, in) @ (in, 4U) matmul over the window's inputs (time-major).

    ``width`` is the row width of its result and of the dz it takes back (:func:`_row_width`)."""

    def __init__(self, width: int):
        self.width = width

    def forward(self, x_tm, kernel, bias, operand_dtype):
        """The window's pre-scaled z input part, (T, B, width)."""
        import tensorflow as tf

        scale = lstm_step.candidate_scale(kernel.shape[1] // lstm_step.GATES, kernel.dtype)
        xw = (_matmul(tf.reshape(x_tm, [-1, kernel.shape[0]]), _pad_columns(kernel * scale, self.width),
                      operand_dtype)
              + _pad_columns(bias * scale, self.width))
        return tf.reshape(xw, tf.concat([tf.shape(x_tm)[:2], [self.width]], 0))

    def backward(self, x_tm, kernel, dz, operand_dtype):
        """Gradients of ``(x_tm, kernel, bias)`` from dz (T*B, width)."""
        import tensorflow as tf

        in_dim, gates = kernel.shape
        x_flat = tf.reshape(x_tm, [-1, in_dim])
        # [X, 1]^T dZ gives dKernel and dBias (last row) in one matmul, instead of a
        # separate memory-bound reduction over the (T*B, 4U) dZ.
        x_ones = tf.concat([x_flat, tf.ones([tf.shape(x_flat)[0], 1], x_flat.dtype)], 1)
        dz = tf.cast(dz, operand_dtype)  # once for both matmuls (a no-op in float32)
        d_kernel_bias = _matmul(x_ones, dz, operand_dtype, transpose_a=True)[:, :gates]
        d_x = _matmul(dz, _materialized_transpose(_pad_columns(kernel, self.width)), operand_dtype)
        d_x = tf.reshape(d_x, tf.shape(x_tm))
        return d_x, d_kernel_bias[:in_dim], d_kernel_bias[in_dim]


class _TableProjection:
    """The input projection of token ids (T, B) through an embedding: rows of ``embeddings @ kernel``."""

    def __init__(self, width: int, ids_tm):
        self.width = width
        self.ids_tm = ids_tm

    def forward(self, embeddings, kernel, bias, operand_dtype):
        import tensorflow as tf

        scale = lstm_step.candidate_scale(kernel.shape[1] // lstm_step.GATES, kernel.dtype)
        table = (_matmul(embeddings, _pad_columns(kernel * scale, self.width), operand_dtype)
                 + _pad_columns(bias * scale, self.width))
        return tf.gather(table, self.ids_tm)

    def backward(self, embeddings, kernel, dz, operand_dtype):
        """Gradients of ``(embeddings, kernel, bias)``: dz summed per token, then two (vocab-sized) matmuls."""
        import tensorflow as tf

        gates = kernel.shape[1]
        d_table = _compiled(_sum_per_token)(dz, tf.reshape(self.ids_tm, [-1]), embeddings.shape[0])[:, :gates]
        d_embeddings = _matmul(d_table, _materialized_transpose(kernel), operand_dtype)
        d_kernel = _matmul(embeddings, d_table, operand_dtype, transpose_a=True)
        return d_embeddings, d_kernel, tf.reduce_sum(d_table, 0)


def _sum_per_token(dz, ids, vocab: int):
    """The rows of dz (N, width) summed per token id: (vocab, width). Run :func:`_compiled`: XLA sums them ~3x
    faster than TensorFlow's own CPU kernel (3200 rows of 2064 floats: 3.1 vs 9.8 ms on an AVX2 Zen 3)."""
    import tensorflow as tf

    return tf.math.unsorted_segment_sum(dz, ids, vocab)


FEATURE_MAJOR_MIN_UNITS = 512  # from this width the compiled recurrence loops carry h and c feature-major


def _feature_major(units: int, compiled: bool) -> bool:
    """Whether the recurrence loops carry h and c feature-major, (U, B), instead of (B, U).

    Feature-major, the forward step adds ``R^T h^T`` to z^T as it comes (batch-major needs ``transpose_b`` and a
    transpose of the (4U, B) product back), the gates are row blocks of z^T (batch-major transposes them to
    gate-major), and the backward's product is ``R dz^T``; but each step then transposes its slice of xw (or of
    the incoming gradient) and the h (or dz) it saves, which stay (B, .) for the window's large matmuls. In the
    compiled float32 training loops at 512 units that pays (forward 80 -> 74 ms per 50 steps on an AVX2 Zen 3;
    whole training steps 1.0-1.07x, medians 1.03-1.08x); at 128-256 units the transposes cost more than they save
    (whole steps 0.87-0.95x). The uncompiled loops (inference, bfloat16) were not measured and stay batch-major.
    BENCHMARKS.md, "Against PyTorch: where the training time goes".
    """
    return compiled and units >= FEATURE_MAJOR_MIN_UNITS


def _lstm_forward(xw, h0, c0, recurrent, save, operand_dtype=None, feature_major=False, native=None):
    """Run the recurrence over the pre-scaled input part of z, ``xw`` (T, B, 4U or wider), in the layout
    ``feature_major`` chooses (:func:`_feature_major`), or in ``native``'s C++ op (:mod:`textgen.native_loops`).

    Returns ``(outputs_tm, h_T, c_T)``; with ``save`` also ``(h_all, c_all, s_all)`` for the backward pass (see
    :func:`_forward_loop`; the C++ op's are batch-major).
    """
    import tensorflow as tf

    units = recurrent.shape[0]
    dtype = xw.dtype
    operand_dtype = operand_dtype or dtype
    # One sigmoid over all 4U columns gives every gate (textgen.lstm_step).
    scale = lstm_step.candidate_scale(units, dtype)
    if native is not None:  # (batch-major: each thread multiplies h by its own units' columns of R)
        h_all, c_all, s_all = native.textgen_lstm_forward(*_no_tape(xw, h0, c0, recurrent * scale))
        return h_all[1:], h_all[-1], c_all[-1], h_all, c_all, s_all
    # The XLA loops' product is z^T = R^T h^T, a (4U, U) x (U, B) matmul: on CPU (oneDNN, Eigen and XLA alike)
    # that shape runs ~1.5x faster than the (B, U) x (U, 4U) one (BENCHMARKS.md, "Against PyTorch").
    rk_t = tf.cast(_materialized_transpose(recurrent * scale), operand_dtype)

    if _compiles_loops(operand_dtype, training=save):  # save: training, inside _lstm_with_grad's custom gradient
        return _compiled(_forward_loop)(*_no_tape(xw, h0, c0, rk_t), save, feature_major)
    return _forward_loop(xw, h0, c0, rk_t, save, feature_major)


def _forward_loop(xw, h0, c0, rk_t, save, feature_major):
    """The forward recurrence. Returns ``(outputs_tm, h_T, c_T)``, with ``save`` also ``(h_all, c_all, s_all)``:
    ``h_all`` (T+1, B, U) with the initial state at 0, always batch-major (the outputs, and dRecurrent's rows);
    ``c_all`` (T+1, ...) and ``s_all`` (T, 4, ...), the gate sigmoids, in the loop's layout: blocks of (B, U), or
    of (U, B) when ``feature_major``."""
    import tensorflow as tf

    gates, units = rk_t.shape
    relayout = tf.transpose if feature_major else tf.identity  # (B, U) <-> the loop's layout, either way
    steps = tf.shape(xw)[0]
    dtype = xw.dtype
    offset = 1 if save else 0
    block = relayout(c0).shape
    h_ta = tf.TensorArray(dtype, size=steps + offset, element_shape=h0.shape)
    c_ta = tf.TensorArray(dtype, size=steps + offset if save else 0, element_shape=block)
    s_ta = tf.TensorArray(dtype, size=steps if save else 0, element_shape=[lstm_step.GATES, *block])
    if save:
        h_ta = h_ta.write(0, h0)
        c_ta = c_ta.write(0, relayout(c0))

    def body(t, h, c, h_ta, c_ta, s_ta):
        xw_t = xw[t] if xw.shape[-1] == gates else xw[t, :, :gates]  # without _row_width's pad
        if feature_major:  # the gates are row blocks of z^T: free views
            s = tf.sigmoid(tf.transpose(xw_t) + _matmul(rk_t, h, rk_t.dtype))
            s = tf.reshape(s, [lstm_step.GATES, units, -1])
        else:  # (B, 4U) -> gate-major (4, B, U): one transpose instead of a column split
            s = tf.sigmoid(xw_t + tf.transpose(_matmul(rk_t, h, rk_t.dtype, transpose_b=True)))
            s = tf.transpose(tf.reshape(s, [-1, lstm_step.GATES, units]), [1, 0, 2])
        h, c = lstm_step.cell_update(*tf.unstack(s), c)
        h_ta = h_ta.write(t + offset, relayout(h))
        if save:
            c_ta = c_ta.write(t + 1, c)
            s_ta = s_ta.write(t, s)
        return t + 1, h, c, h_ta, c_ta, s_ta

    _, h, c, h_ta, c_ta, s_ta = tf.while_loop(
        lambda t, *_: t < steps,
        body,
        (tf.constant(0), relayout(h0), relayout(c0), h_ta, c_ta, s_ta),
        maximum_iterations=steps,
    )
    h_all = h_ta.stack()
    h, c = relayout(h), relayout(c)
    if not save:
        return h_all, h, c
    return h_all[1:], h, c, h_all, c_ta.stack(), s_ta.stack()


def _in_xla_compilation() -> bool:
    """Whether the graph being built is compiled by XLA as a whole (a caller's ``jit_compile=True``), where the
    C++ loops, which have no XLA kernel, cannot run."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _no_tape(*tensors):
    """The inputs of a compiled loop, hidden from any gradient tape: the custom gradient already covers the
    loop, and a taped call would make XLA return the loop's TensorLists for autodiff, which it cannot."""
    import tensorflow as tf

    return [tf.stop_gradient(tensor) for tensor in tensors]


@functools.cache
def _compiled(loop):
    """``loop`` compiled by XLA. For a recurrence loop on CPU that fuses each step's gate arithmetic
    and drops the per-op dispatch: the forward loop of 128-256 units runs ~20% faster (BENCHMARKS.md).
    Only the float32 loops: bfloat16 products stay on oneDNN's kernels. (Also the table projection's sum per
    token, which has no matmul.)"""
    import tensorflow as tf

    return tf.function(loop, jit_compile=True)


def _lstm_backward(recurrent, h_all, c_all, s_all, feature_major, d_outputs, d_h_last, d_c_last, operand_dtype,
                   width, native=None):
    """Reverse recurrence plus the recurrent kernel's gradient, in the layout the forward loop saved its states in
    (by ``native``'s C++ op when the forward ran there).

    Returns ``dz`` (T*B, width), the gradient of the (unscaled) z of every step (zero beyond 4U: see
    :func:`_row_width`), and the gradients of ``(h0, c0, recurrent)``.
    """
    import tensorflow as tf

    units = recurrent.shape[0]
    dtype = h_all.dtype
    if d_outputs is None:
        d_outputs = tf.zeros_like(h_all[1:])
    dh = tf.zeros(tf.shape(h_all)[1:], dtype) if d_h_last is None else d_h_last
    dc = tf.zeros(tf.shape(h_all)[1:], dtype) if d_c_last is None else d_c_last
    if feature_major:  # the step's product is dh^T = R dz^T, (U, 4U) x (4U, B)
        step_weights = tf.cast(recurrent, operand_dtype)
    else:
        # dh = dz R^T with R^T pre-transposed: matmul(..., transpose_b=True) is slower on CPU (up to 5x for
        # this shape); Snapshot stops grappler from folding the transpose back into the matmul. (width, U):
        # the rows beyond 4U are zeros, like dz's padded columns.
        step_weights = tf.cast(_materialized_transpose(_pad_columns(recurrent, width)), operand_dtype)
    loop_inputs = (s_all, c_all, d_outputs, dh, dc, step_weights)
    if native is not None:
        dz_all, dh0, dc0 = native.textgen_lstm_backward(*_no_tape(*loop_inputs), width=width)
    elif _compiles_loops(operand_dtype, training=True):
        dz_all, dh0, dc0 = _compiled(_backward_loop)(*_no_tape(*loop_inputs), width, feature_major)
    else:
        dz_all, dh0, dc0 = _backward_loop(*loop_inputs, width, feature_major)
    # float32 even when the matmuls take bfloat16: the table projection sums dz per token.
    dz = tf.reshape(dz_all, [-1, width])
    h_prev = tf.reshape(h_all[:-1], [-1, units])
    d_recurrent = _matmul(h_prev, dz, operand_dtype, transpose_a=True)[:, :lstm_step.GATES * units]
    return dz, dh0, dc0, d_recurrent


def _backward_loop(s_all, c_all, d_outputs, dh, dc, step_weights, width, feature_major):
    """The reverse recurrence: dz (T, B, width) of every step (always (B, .), for the weight gradients' large
    matmuls), and the gradients reaching h0 and c0. ``step_weights`` is R (U, 4U) when ``feature_major``, else
    R^T padded to (width, U)."""
    import tensorflow as tf

    relayout = tf.transpose if feature_major else tf.identity
    steps = tf.shape(s_all)[0]
    dz_ta = tf.TensorArray(dh.dtype, size=steps, element_shape=[dh.shape[0], width])

    def body(t, dh, dc, dz_ta):
        dz, dc = lstm_step.gate_gradients(s_all[t], c_all[t], c_all[t + 1], dh + relayout(d_outputs[t]), dc,
                                          units_axis=0 if feature_major else 1)
        if feature_major:  # dz is dz^T (4U, B)
            dh = _matmul(step_weights, dz, step_weights.dtype)
            dz = _pad_columns(tf.transpose(dz), width)
        else:
            dz = _pad_columns(dz, width)
            dh = _matmul(dz, step_weights, step_weights.dtype)
        return t - 1, dh, dc, dz_ta.write(t, dz)

    _, dh0, dc0, dz_ta = tf.while_loop(
        lambda t, *_: t >= 0,
        body,
        (steps - 1, relayout(dh), relayout(dc), dz_ta),
        maximum_iterations=steps,
    )
    return dz_ta.stack(), relayout(dh0), relayout(dc0)


def _lstm_with_grad(projection, source, h0, c0, kernel, recurrent, bias, operand_dtype):
    """The training path: ``projection`` (dense or table) turns ``source`` into the input part of z."""
    import tensorflow as tf

    # One layout for both directions: the backward reads the states the forward saved in it.
    compiled = _compiles_loops(operand_dtype, training=True)
    native = native_loops.library() if compiled and not _in_xla_compilation() else None
    feature_major = native is None and _feature_major(recurrent.shape[0], compiled)

    @tf.custom_gradient
    def lstm(source, h0, c0, kernel, recurrent, bias):
        xw = projection.forward(source, kernel, bias, operand_dtype)
        outputs, h_last, c_last, h_all, c_all, s_all = _lstm_forward(
            xw, h0, c0, recurrent, save=True, operand_dtype=operand_dtype, feature_major=feature_major, native=native
        )

        def grad(d_outputs, d_h_last, d_c_last):
            dz, dh0, dc0, d_recurrent = _lstm_backward(recurrent, h_all, c_all, s_all, feature_major, d_outputs,
                                                       d_h_last, d_c_last, operand_dtype, projection.width, native)
            d_source, d_kernel, d_bias = projection.backward(source, kernel, dz, operand_dtype)
            return d_source, dh0, dc0, d_kernel, d_recurrent, d_bias

        return (outputs, h_last, c_last), grad

    return lstm(source, h0, c0, kernel, recurrent, bias)
