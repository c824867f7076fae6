"""textgen.lstm_step against the stock keras.layers.LSTMCell: forward and gradients of one step."""

import keras
import numpy as np
import tensorflow as tf

from textgen import lstm_step


def stock_cell(units=6, inputs=5, seed=3):
    cell = keras.layers.LSTMCell(units, recurrent_initializer="glorot_uniform", seed=seed)
    cell.build((None, inputs))
    rng = np.random.default_rng(seed)
    cell.bias.assign(rng.normal(size=cell.bias.shape).astype("float32"))  # the stock init hides gate mix-ups
    return cell


def shared_step(cell, x, h, c):
    kernel, recurrent, bias = (lstm_step.prescale_candidate(w.numpy()) for w in (cell.kernel, cell.recurrent_kernel,
                                                                                 cell.bias))
    s = tf.sigmoid(x @ kernel + h @ recurrent + bias)
    return lstm_step.cell_update(*tf.split(s, lstm_step.GATES, axis=1), c)


def test_one_step_equals_the_stock_cell():
    cell = stock_cell()
    rng = np.random.default_rng(0)
    x, h, c = (rng.normal(size=(4, n)).astype("float32") for n in (5, 6, 6))
    expected_h, (_, expected_c) = cell(x, [h, c])
    got_h, got_c = shared_step(cell, x, h, c)
    np.testing.assert_allclose(got_h, expected_h, atol=1e-6)
    np.testing.assert_allclose(got_c, expected_c, atol=1e-6)


def test_gate_gradients_equal_autodiff_of_the_stock_cell():
    cell = stock_cell()
    rng = np.random.default_rng(1)
    x, h, c = (tf.constant(rng.normal(size=(4, n)).astype("float32")) for n in (5, 6, 6))
    dh_out, dc_out = (tf.constant(rng.normal(size=(4, 6)).astype("float32")) for _ in range(2))
    with tf.GradientTape() as tape:
        tape.watch([x, h, c])
        new_h, (_, new_c) = cell(x, [h, c])
        objective = tf.reduce_sum(new_h * dh_out) + tf.reduce_sum(new_c * dc_out)
    dx, dh, dc = tape.gradient(objective, [x, h, c])

    kernel, recurrent, bias = (lstm_step.prescale_candidate(w.numpy()) for w in (cell.kernel, cell.recurrent_kernel,
                                                                                 cell.bias))
    s = tf.sigmoid(x @ kernel + h @ recurrent + bias)
    _, c_new = lstm_step.cell_update(*tf.split(s, lstm_step.GATES, axis=1), c)
    gate_major = tf.transpose(tf.reshape(s, [4, 4, 6]), [1, 0, 2])  # (4 gates, batch, units)
    dz, dc_prev = lstm_step.gate_gradients(gate_major, c, c_new, dh_out, dc_out, units_axis=1)
    np.testing.assert_allclose(dz @ tf.transpose(cell.recurrent_kernel), dh, atol=1e-5)
    np.testing.assert_allclose(dz @ tf.transpose(cell.kernel), dx, atol=1e-5)
    np.testing.assert_allclose(dc_prev, dc, atol=1e-5)
    # the same blocks feature-major, (4 gates, units, batch): dz^T
    feature_major = tf.reshape(tf.transpose(s), [4, 6, 4])
    dz_t, dc_prev_t = lstm_step.gate_gradients(feature_major, tf.transpose(c), tf.transpose(c_new),
                                               tf.transpose(dh_out), tf.transpose(dc_out), units_axis=0)
    np.testing.assert_array_equal(tf.transpose(dz_t), dz)
    np.testing.assert_array_equal(tf.transpose(dc_prev_t), dc_prev)
