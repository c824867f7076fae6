"""Run by tests/test_export.py in a process where textgen cannot be imported: load each export with plain
Keras / TensorFlow and print what it computes as JSON."""

import json
import sys

sys.modules["textgen"] = None  # any import of textgen now fails

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

out, text = sys.argv[1], sys.argv[2]
chars = json.loads(open(f"{out}/vocab.json", encoding="utf-8").read())["chars"]
ids = np.array([chars.index(ch) for ch in text], np.int32)
result = {}

import keras  # noqa: E402

model = keras.saving.load_model(f"{out}/model.keras")
result["layers"] = sorted({type(layer).__module__.split(".")[0] for layer in model.layers})
result["keras"] = np.asarray(model(ids[None, :]))[0].tolist()

served = tf.saved_model.load(f"{out}/savedmodel")
layers, _, units = served.signatures["step"].structured_input_signature[1]["h"].shape
zeros = tf.zeros([layers, 2, units])
both = served.signatures["step"](ids=tf.constant(np.stack([ids, ids])), h=zeros, c=zeros)["logits"].numpy()
result["savedmodel_batch2"] = both.tolist()
generate = served.signatures["generate"]
texts = [generate(prime=tf.constant("abc"), length=tf.constant(40), temperature=tf.constant(t),
                  seed=tf.constant(s, tf.int64))["text"].numpy().decode("utf-8") for t, s in
         [(0.0, 1), (1.0, 7), (1.0, 7), (1.0, 8)]]
result["generated"] = texts
filtered = served.signatures["generate_filtered"]


guarded = served.signatures["generate_guarded"]
result["filtered_inputs"] = sorted(filtered.structured_input_signature[1])  # as exported before the guard
result["guarded_inputs"] = sorted(guarded.structured_input_signature[1])


def generate_filtered(temperature, seed, top_k, top_p, min_p=0.0, max_repeat=None, prime="abc"):
    inputs = dict(prime=tf.constant(prime), length=tf.constant(40), temperature=tf.constant(temperature),
                  seed=tf.constant(seed, tf.int64), top_k=tf.constant(top_k), top_p=tf.constant(top_p),
                  min_p=tf.constant(min_p))
    if max_repeat is None:
        return filtered(**inputs)["text"].numpy().decode("utf-8")
    return guarded(**inputs, max_repeat=tf.constant(max_repeat))["text"].numpy().decode("utf-8")


result["filtered"] = dict(unfiltered=generate_filtered(1.0, 7, 0, 1.0),
                          unguarded=generate_filtered(1.0, 7, 0, 1.0, 0.0, 0), hot=generate_filtered(5.0, 8, 0, 1.0),
                          top_k_1=generate_filtered(5.0, 8, 1, 1.0), top_p_small=generate_filtered(5.0, 8, 0, 0.01),
                          min_p_1=generate_filtered(5.0, 8, 0, 1.0, 1.0))
# Near-uniform draws (temperature 100) repeat characters; the guard allows at most max_repeat in a row, counting
# the prime's last characters ("abcc": c has come twice).
result["repeats"] = {str(max_repeat): [generate_filtered(100.0, seed, 0, 1.0, max_repeat=max_repeat, prime="abcc")
                                       for seed in range(16)] for max_repeat in (0, 1, 2)}


def refusal(call) -> str:
    try:
        call()
        return "accepted"
    except tf.errors.InvalidArgumentError as error:
        return error.message


result["filtered"]["bad_top_p"] = refusal(lambda: generate_filtered(1.0, 8, 0, 0.0))
result["filtered"]["bad_max_repeat"] = refusal(lambda: generate_filtered(1.0, 8, 0, 1.0, max_repeat=-1))
result["filtered"]["bad_top_k"] = refusal(lambda: generate_filtered(1.0, 8, -1, 1.0))
result["bad_temperature"] = [refusal(lambda: generate(prime=tf.constant("abc"), length=tf.constant(5),
                                                      temperature=tf.constant(float("nan")),
                                                      seed=tf.constant(1, tf.int64))),
                             refusal(lambda: generate_filtered(float("inf"), 8, 0, 1.0)),
                             refusal(lambda: generate_filtered(-1.0, 8, 0, 1.0)),
                             refusal(lambda: generate_filtered(1e7, 8, 0, 1.0))]
result["negative_seed"] = refusal(lambda: generate(prime=tf.constant("abc"), length=tf.constant(5),
                                                   temperature=tf.constant(0.5), seed=tf.constant(-5, tf.int64)))
result["no_step"] = refusal(lambda: served.signatures["step"](ids=tf.zeros([2, 0], tf.int32),
                                                               h=tf.zeros([layers, 2, units]),
                                                               c=tf.zeros([layers, 2, units])))
result["id_out_of_range"] = [refusal(lambda bad=bad: served.signatures["step"](
    ids=tf.constant([[0, bad]]), h=tf.zeros([layers, 1, units]), c=tf.zeros([layers, 1, units])))
    for bad in (-1, len(json.load(open(f"{out}/vocab.json"))["chars"]))]
result["negative_length"] = refusal(lambda: generate(prime=tf.constant("abc"), length=tf.constant(-5),
                                                     temperature=tf.constant(0.5), seed=tf.constant(1, tf.int64)))
result["huge_length"] = refusal(lambda: generate(prime=tf.constant("abc"), length=tf.constant(2**31 - 1),
                                                 temperature=tf.constant(0.5), seed=tf.constant(1, tf.int64)))
result["batch_of_primes"] = refusal(lambda: generate(prime=tf.constant(["abc", "bcd"]), length=tf.constant(5),
                                                     temperature=tf.constant(0.5), seed=tf.constant(1, tf.int64)))
result["state_of_other_batch"] = refusal(lambda: served.signatures["step"](
    ids=tf.constant(ids[None, :]), h=tf.zeros([layers, 3, units]), c=tf.zeros([layers, 3, units])))
result["long_prime"] = generate(prime=tf.constant("abcdefg" * 300), length=tf.constant(7),
                                temperature=tf.constant(0.0), seed=tf.constant(1, tf.int64))["text"].numpy().decode()

interpreter = tf.lite.Interpreter(model_path=f"{out}/model.tflite")
step = interpreter.get_signature_runner()
h = np.zeros([layers, 1, units], np.float32)
c = h.copy()
rows = []
for i in ids:
    outputs = step(ids=np.array([i], np.int32), h=h, c=c)
    h, c = outputs["h"], outputs["c"]
    rows.append(outputs["logits"][0].tolist())
result["litert"] = rows
try:  # a state of 3 rows for 1 id was broadcast to 3 rows of logits
    step(ids=np.array([ids[0]], np.int32), h=np.zeros([layers, 3, units], np.float32),
         c=np.zeros([layers, 3, units], np.float32))
    result["litert_state_of_other_batch"] = "accepted"
except (RuntimeError, ValueError) as error:
    result["litert_state_of_other_batch"] = str(error)
print(json.dumps(result))
