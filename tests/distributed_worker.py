"""Run by tests/test_distribute.py in a fresh process (TensorFlow's devices are fixed at start-up).

usage: distributed_worker.py equivalence OUT.json
       distributed_worker.py train CORPUS CHECKPOINT_DIR OUT.npz [TRAIN_OPTIONS.json]   (with TF_CONFIG set)
"""

import json
import os
import sys

import numpy as np


def equivalence(out_path):
    os.environ["TEXTGEN_CPU_DEVICES"] = "2"
    import tensorflow as tf

    from textgen.batching import StreamBatches
    from textgen.config import ModelConfig, TrainConfig
    from textgen.distribute import make_strategy
    from textgen.session import Session

    mirrored = make_strategy("mirrored")
    all_reduces = []  # the replica-context sums traced (each is a collective between the workers of a cluster)
    all_reduce = tf.distribute.ReplicaContext.all_reduce
    tf.distribute.ReplicaContext.all_reduce = lambda *args, **kwargs: all_reduces.append(1) or all_reduce(
        *args, **kwargs)
    # 48 units: the C++ training loops, where built, split them among threads, both replicas' at once
    config = ModelConfig(vocab_size=11, embedding_dim=6, units=48, layers=2, dropout=0.0)
    # A small clip norm so that clipping is active: it must act on the summed gradient of both replicas.
    # float32: bfloat16 products round differently for 2 and 4 rows, which is not what this compares.
    training = TrainConfig(batch_size=4, seq_length=7, learning_rate=0.01, clip_norm=0.5, mixed_precision="off")
    single = Session(config, training, tf.distribute.get_strategy())
    distributed = Session(config, training, mirrored)
    distributed.model.set_weights(single.model.get_weights())
    batches = StreamBatches(np.random.default_rng(0).integers(0, 11, 400), 4, 7)
    losses = [[float(session.train_step(*batches[k])) for session in (single, distributed)] for k in range(6)]
    state_diffs, replica_parts = [], []
    for layer_single, layer_distributed in zip(single.lstms, distributed.lstms):
        for state_single, state_distributed in zip(layer_single.states, layer_distributed.states):
            rows = np.asarray(state_single)
            parts = mirrored.experimental_local_results(state_distributed.value)
            replica_parts.append(len(parts))
            for replica, part in enumerate(parts):
                state_diffs.append(float(np.abs(np.asarray(part) - rows[2 * replica:2 * replica + 2]).max()))
    # What a checkpoint saves (and a mid-epoch resume restores): every replica's rows, in order.
    saved_diff = max(float(np.abs(distributed.lstm_states()[name] - rows).max())
                     for name, rows in single.lstm_states().items())
    weight_diff = max(float(np.abs(a - b).max())
                      for a, b in zip(single.model.get_weights(), distributed.model.get_weights()))
    json.dump(dict(replicas=mirrored.num_replicas_in_sync, losses=losses, state_diffs=state_diffs,
                   all_reduces=len(all_reduces), replica_parts=replica_parts, saved_diff=saved_diff,
                   weight_diff=weight_diff, state_norm=float(np.abs(rows).max())), open(out_path, "w"))


def train_worker(corpus, checkpoint_dir, out_path, options="{}"):
    from textgen import distribute
    from textgen.training import train

    distribute.JOIN_TIMEOUT = float(os.environ.get("JOIN_TIMEOUT", distribute.JOIN_TIMEOUT))

    summary = train(corpus, checkpoint_dir, run="r", strategy="multi-worker",
                    model_options=dict(units=16, embedding_dim=8, dropout=0.0),
                    train_options={**dict(batch_size=4, seq_length=10, epochs=1), **json.loads(options)})
    np.savez(out_path, *summary["model"].get_weights())


if __name__ == "__main__":
    if sys.argv[1] == "equivalence":
        equivalence(sys.argv[2])
    else:
        train_worker(*sys.argv[2:6])
