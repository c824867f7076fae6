"""The LSTM step that textgen's own loops share (the fast training path, the sampling engine, exports).

It computes what ``keras.layers.LSTM`` computes (the reference in the tests): with
``z = x @ kernel + h @ recurrent_kernel + bias`` split into the gate blocks in Keras order
(input, forget, candidate, output),

    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_c)
    c' = f * c + i * g;  h' = o * tanh(c')

One change of form makes it cheaper: the candidate block of the weights is scaled by 2 beforehand
(:func:`prescale_candidate`), so that a single sigmoid over all 4U columns gives every gate, since
tanh(z) = 2 sigmoid(2 z) - 1. :func:`cell_update` takes those four sigmoids.
"""

from __future__ import annotations

CANDIDATE_SCALE = 2.0  # the candidate block of kernel, recurrent kernel and bias is multiplied by this
GATES = 4  # input, forget, candidate, output: the column blocks of a Keras LSTM's weights


def prescale_candidate(weights):
    """A NumPy copy of kernel/recurrent kernel (..., 4U) or bias (4U,) with the candidate block scaled."""
    import numpy as np

    scaled = np.array(weights, copy=True)
    units = scaled.shape[-1] // GATES
    scaled[..., 2 * units:3 * units] *= CANDIDATE_SCALE
    return scaled


def candidate_scale(units: int, dtype):
    """The (4U,) column factors of :func:`prescale_candidate` as a tensor, to scale weights inside a graph."""
    import tensorflow as tf

    one = tf.ones([units], dtype)
    return tf.concat([one, one, CANDIDATE_SCALE * one, one], 0)


def cell_update(i, f, s_candidate, o, c):
    """One step of the cell from the four gate sigmoids (of pre-scaled z): returns (h, c)."""
    import tensorflow as tf

    c = f * c + i * (2.0 * s_candidate - 1.0)
    return o * tf.tanh(c), c


def gate_gradients(s, c_prev, c, dh, dc, units_axis):
    """Backward of :func:`cell_update` through the sigmoids: ``s`` (4, ...) holds the four gate sigmoids, each
    block shaped like the cell ``c_prev``/``c`` before and after the step ((B, U), or (U, B) feature-major).

    ``dh``/``dc`` are the gradients reaching h' and c'. Returns dz, the gradient with respect to the Keras z
    (not pre-scaled: it multiplies the layer's own weights) with the gate blocks joined along their ``units_axis``
    ((B, 4U) for (B, U) blocks and axis 1, (4U, B) for feature-major blocks and axis 0), and the gradient reaching
    c."""
    import tensorflow as tf

    i, f, sg, o = tf.unstack(s)
    di, df, dg, do = tf.unstack(s - s * s)  # sigmoid'
    tc = tf.tanh(c)
    dc = dc + dh * o * (1.0 - tc * tc)
    # The candidate is g = 2 s - 1 with s = sigmoid(2 z), so its dz = dg * 4 s (1 - s).
    dz = tf.concat([dc * (2.0 * sg - 1.0) * di, dc * c_prev * df, (4.0 * dc) * i * dg, dh * tc * do], units_axis)
    return dz, dc * f
