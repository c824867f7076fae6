"""Training throughput: stock keras.layers.LSTM vs textgen FastLSTM, against the machine ceiling.

Reference config: vocabulary 65, embedding 256, one stateful LSTM of 512 units, batch 64,
sequence 100, random ids, one minimal train step for every variant (tf.function + GradientTape,
SparseCategoricalCrossentropy(from_logits=True), Adam(global_clipnorm=5), apply_gradients): it compares
the layers, not the whole of `textgen train` (its Session step, with weight decay and the distributed
clip, is timed against PyTorch in bench_peers.py).

Both models are built with the same weights and timed in alternating blocks in one process
(warm-up steps excluded). The ceiling is the best float32 numpy matmul FLOP/s measured in
the same run, divided by the FLOPs one training character costs:
    3 x 2 x (embedding + units) x 4 x units   (LSTM: forward + 2x backward)
  + 3 x 2 x units x vocab                      (output layer)
numpy (OpenBLAS) and TensorFlow (oneDNN / Eigen) use different BLAS libraries, so a
TensorFlow matmul ceiling is measured and reported too. Speeds use each variant's best
step (like the best-of ceiling: contention on a shared machine only ever adds time);
medians and CPU seconds per step are printed alongside.

Findings on the 2-core reference machine: oneDNN on (the TF default) matters most (off:
FastLSTM ~60% instead of ~80% of the numpy ceiling); intra-op threads = cores (the default)
matters (1 thread: ~59%); inter-op threads 1, 2 (default) or 4 make no measurable difference.

    python benchmarks/bench_train.py [--steps N] [--quick] [--intra N] [--inter N] [--onednn 0|1]
                                     [--variants stock,fast] [--dropout P]

Ends with one line of key=value pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant per round (default 6)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (default 2)")
    p.add_argument("--quick", action="store_true", help="1 round of 3 steps, 1 warm-up step (~20 s)")
    p.add_argument("--intra", type=int, default=0, help="TF intra-op threads (0 = TF default)")
    p.add_argument("--inter", type=int, default=0, help="TF inter-op threads (0 = TF default)")
    p.add_argument("--onednn", choices=["0", "1", "default"], default="default", help="TF_ENABLE_ONEDNN_OPTS")
    p.add_argument("--variants", default="stock,fast,fast-bf16", help="comma list of stock,fast,fast-bf16")
    p.add_argument("--seq", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--embedding", type=int, default=256)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--dropout", type=float, default=0.0, help="LSTM input dropout (default 0)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.warmup = 3, 1, 1
    return args


def numpy_matmul_flops(n=2048, repeats=7):
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def tf_matmul_flops(tf, n=2048, repeats=7):
    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))
    f = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))
    f(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).numpy()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def numpy_blas_name() -> str:
    import numpy as np

    try:
        return np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # older numpy
        return "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.onednn != "default":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = args.onednn
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    # Ceiling first, before TensorFlow's thread pools exist.
    np_flops = numpy_matmul_flops()

    import numpy as np
    import tensorflow as tf

    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    import keras

    from textgen.config import ModelConfig
    from textgen.fast_lstm import FastLSTM

    B, T, U, E, V = args.batch, args.seq, args.units, args.embedding, args.vocab
    flops_per_char = 3 * ModelConfig(vocab_size=V, embedding_dim=E, units=U, layers=1).forward_flops_per_char()
    chars_per_step = B * T

    def build(lstm_cls):
        inputs = keras.Input(batch_shape=(B, None), dtype="int32", name="ids")
        x = keras.layers.Embedding(V, E, name="embedding")(inputs)
        x = lstm_cls(U, stateful=True, return_sequences=True, recurrent_initializer="glorot_uniform",
                     dropout=args.dropout, name="lstm_0")(x)
        logits = keras.layers.Dense(V, name="logits")(x)
        return keras.Model(inputs, logits)

    def make_step(model):
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        optimizer = keras.optimizers.Adam(1e-3, global_clipnorm=5.0)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = loss_fn(y, logits)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return step

    keras.utils.set_random_seed(0)
    classes = {"stock": keras.layers.LSTM, "fast": FastLSTM,
               "fast-bf16": lambda *a, **k: FastLSTM(*a, matmul_dtype="bfloat16", **k)}
    names = [n for n in args.variants.split(",") if n]
    from textgen.cpu import bfloat16_matmul_crashes

    if "fast-bf16" in names and bfloat16_matmul_crashes():  # (ONEDNN_MAX_CPU_ISA below AVX-512 on an AVX-512 CPU)
        print("fast-bf16 left out: TensorFlow crashes multiplying bfloat16 with oneDNN held below AVX-512 here")
        names.remove("fast-bf16")
    models = {n: build(classes[n]) for n in names}
    weights = models[names[0]].get_weights()
    for n in names[1:]:
        models[n].set_weights(weights)
    steps = {n: make_step(models[n]) for n in names}
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(B, T + 1), dtype=np.int32)
    x, y = tf.constant(ids[:, :-1]), tf.constant(ids[:, 1:])

    for n in names:
        for _ in range(args.warmup):
            float(steps[n](x, y))
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            for _ in range(args.steps):
                c = time.process_time()
                t = time.perf_counter()
                float(steps[n](x, y))
                times[n].append(time.perf_counter() - t)
                cpu[n].append(time.process_time() - c)
        np_flops = max(np_flops, numpy_matmul_flops(repeats=3))
    tf_flops = tf_matmul_flops(tf)
    np_flops = max(np_flops, numpy_matmul_flops())

    # Best step (like the best-of matmul ceiling) is the headline: this machine is shared,
    # and contention only ever adds time. Medians and CPU time are shown alongside.
    ceiling = np_flops / flops_per_char
    tf_ceiling = tf_flops / flops_per_char
    best = {n: min(times[n]) for n in names}
    median = {n: statistics.median(times[n]) for n in names}
    speed = {n: chars_per_step / best[n] for n in names}
    speed_median = {n: chars_per_step / median[n] for n in names}
    cpu_per_step = {n: statistics.median(cpu[n]) for n in names}

    print(f"config: vocab={V} embedding={E} units={U} batch={B} seq={T} dropout={args.dropout}  "
          f"threads intra={args.intra or 'default'} inter={args.inter or 'default'} "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}  "
          f"timed steps/variant={len(times[names[0]])}")
    print(f"FLOPs per training char: {flops_per_char / 1e6:.2f} M  (numpy BLAS: {numpy_blas_name()}; "
          f"TensorFlow matmuls: oneDNN unless TF_ENABLE_ONEDNN_OPTS=0, then Eigen)")
    print(f"numpy matmul (2048^3, best): {np_flops / 1e9:7.1f} GFLOP/s -> ceiling {ceiling:8.0f} chars/s")
    print(f"tf    matmul (2048^3, best): {tf_flops / 1e9:7.1f} GFLOP/s -> ceiling {tf_ceiling:8.0f} chars/s")
    print(f"{'variant':<8} {'best ms':>8} {'median ms':>10} {'cpu s/step':>10} {'chars/s':>8} "
          f"{'(median)':>8} {'of numpy ceil':>13} {'of tf ceil':>10}")
    for n in names:
        print(f"{n:<8} {1e3 * best[n]:8.1f} {1e3 * median[n]:10.1f} {cpu_per_step[n]:10.2f} {speed[n]:8.0f} "
              f"{speed_median[n]:8.0f} {speed[n] / ceiling:13.1%} {speed[n] / tf_ceiling:10.1%}")
    kv = {
        "numpy_gflops": f"{np_flops / 1e9:.1f}",
        "tf_gflops": f"{tf_flops / 1e9:.1f}",
        "ceiling_chars_per_s": f"{ceiling:.0f}",
        "tf_ceiling_chars_per_s": f"{tf_ceiling:.0f}",
    }
    for n in names:
        kv[f"{n}_chars_per_s"] = f"{speed[n]:.0f}"
        kv[f"{n}_median_chars_per_s"] = f"{speed_median[n]:.0f}"
        kv[f"{n}_frac_ceiling"] = f"{speed[n] / ceiling:.3f}"
        kv[f"{n}_frac_tf_ceiling"] = f"{speed[n] / tf_ceiling:.3f}"
        kv[f"{n}_median_frac_ceiling"] = f"{speed_median[n] / ceiling:.3f}"
    if "stock" in speed and "fast" in speed:
        kv["ratio_fast_over_stock"] = f"{speed['fast'] / speed['stock']:.2f}"
        print(f"ratio fast/stock (best steps): {speed['fast'] / speed['stock']:.2f}x")
    if "fast" in speed and "fast-bf16" in speed:
        kv["ratio_bf16_over_fast"] = f"{speed['fast-bf16'] / speed['fast']:.2f}"
        print(f"ratio fast-bf16/fast (best steps): {speed['fast-bf16'] / speed['fast']:.2f}x  (bfloat16 matmul "
              f"operands, float32 state and weights; the ceiling above is float32)")
    print(" ".join(f"{k}={v}" for k, v in kv.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
