"""textgen serve: the real server on a loopback port, its API, streaming, concurrency and bad requests."""

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest

from conftest import PERIOD, free_port
from textgen.evaluation import bpc


SERVED = {}


@contextlib.contextmanager
def serving(app, **config):
    """The app on a real uvicorn server on a free loopback port (with uvicorn's config options); yields its base
    URL."""
    import uvicorn

    port = free_port()
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not running.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        running.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(trained_run):
    from textgen.serve import Limits, create_app

    app = create_app(trained_run["checkpoint_dir"], "period", Limits(max_length=1000, max_samples=4))
    SERVED["app"] = app
    with serving(app) as base:
        yield base


def call(base, path, body=None, raw=None, timeout=60):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def test_the_playground_tells_the_browser_to_run_its_own_script_and_style_only(server):
    """No security headers: a browser would run any script that got into the page and let any site frame it."""
    import base64
    import hashlib
    import re

    for method in ("GET", "HEAD"):
        with urllib.request.urlopen(urllib.request.Request(server + "/", method=method), timeout=60) as page:
            headers, body = page.headers, page.read().decode("utf-8")
        policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
        assert (policy["default-src"], policy["connect-src"], policy["frame-ancestors"]) == ("'none'", "'self'",
                                                                                              "'none'")
        assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"]) == ("DENY", "nosniff")
        if method == "GET":
            for tag, source in (("script", "script-src"), ("style", "style-src")):
                [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", body, re.S)
                digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
                assert policy[source] == f"'sha256-{digest}'"
    assert "Content-Security-Policy" not in urllib.request.urlopen(server + "/healthz", timeout=60).headers


def test_health_models_and_openapi(server, trained_run):
    assert call(server, "/healthz") == (200, '{"status":"ok"}')
    with urllib.request.urlopen(urllib.request.Request(server + "/", method="HEAD"), timeout=60) as page:
        assert page.status == 200  # what uptime checkers send (it was a 405)
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"  # GET's (it was the page as JSON)
    with urllib.request.urlopen(urllib.request.Request(server + "/v1/models", method="HEAD"), timeout=60) as listed:
        assert listed.status == 200 and listed.headers["Content-Type"] == "application/json"  # (a 405)
        assert listed.read() == b""
    status, text = call(server, "/v1/models")
    models = json.loads(text)
    assert status == 200 and models["default"] == "period"
    [model] = models["models"]
    assert (model["name"], model["corpus"], model["epochs"], model["units"]) == ("period", "period.txt", 3, 32)
    assert model["val_bpc"] == pytest.approx(bpc(trained_run["best_val_loss"]), abs=1e-4)
    assert models["limits"] == dict(max_length=1000, max_samples=4, max_prime_chars=4000, max_score_chars=20000)
    status, text = call(server, "/v1/openapi.json")
    spec = json.loads(text)
    assert status == 200 and {"/v1/generate", "/v1/score", "/v1/next", "/v1/models"} <= set(spec["paths"])
    # The errors as they are sent ({"error": ...}); FastAPI described a 422 of its own form ({"detail": [...]}).
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    for path in ("/v1/generate", "/v1/score", "/v1/next"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"400", "404", "413", "415", "422", "500"} <= set(responses)
        assert all(responses[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/"
                                                                                     "ErrorBody"}
                   for code in ("400", "422", "500"))
    assert "text/event-stream" in spec["paths"]["/v1/generate"]["post"]["responses"]["200"]["content"]
    assert 'event "error"' in spec["paths"]["/v1/generate"]["post"]["responses"]["200"]["description"]
    # The ranges, as SampleConfig declares them (no schema said that top_p lies in (0, 1] or length in [0, 1e7]).
    fields = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    top_p = fields["top_p"]["anyOf"][0]
    assert (top_p["type"], top_p["exclusiveMinimum"], top_p["maximum"]) == ("number", 0, 1)
    # This server's limits where they are tighter (the general rule's length was up to 1e7 on a server of 1,000).
    assert (fields["length"]["minimum"], fields["length"]["maximum"]) == (0, 1000)
    assert (fields["num_samples"]["maximum"], fields["prime"]["maxLength"]) == (4, 4000)
    assert spec["components"]["schemas"]["ScoreRequest"]["properties"]["text"]["maxLength"] == 20000
    # The stop strings' limits, which the document did not give (16 strings, 1,000 characters each)
    text, texts = ({"type": "string", "minLength": 1, "maxLength": 1000}, {
        "type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 1000}, "minItems": 1, "maxItems": 16})
    assert fields["stop"]["anyOf"] == [text, texts, {"type": "null"}]
    next_fields = spec["components"]["schemas"]["NextRequest"]["properties"]
    assert next_fields["prime"]["maxLength"] == 4000 and next_fields["top"]["anyOf"][0] == {"type": "integer",
                                                                                           "minimum": 1}
    assert (next_fields["temperature"]["default"], next_fields["temperature"]["maximum"]) == (1.0, 10**6)
    assert fields["seed"]["anyOf"][0] == {"type": "integer", "minimum": 0}
    # Integers as integers (FastAPI wrote "minimum": 1.0), and a temperature list's items bounded, the list not empty
    assert '"minimum": 1.0' not in json.dumps(spec) and fields["top_k"]["anyOf"][0] == {"type": "integer",
                                                                                       "minimum": 1}
    number, array = fields["temperature"]["anyOf"]
    assert (number["minimum"], array["items"]["minimum"], array["minItems"]) == (0, 0, 1)
    assert number["maximum"] == array["items"]["maximum"] == 10**6


def test_every_answer_is_as_the_openapi_document_describes_it(server):
    """The 200 answers' schemas were empty ({}): a client generated from the document got Any for each."""
    from textgen.serve_schema import GenerateResponse, Health, ModelsResponse, NextResponse, ScoreResponse

    spec = json.loads(call(server, "/v1/openapi.json")[1])
    for path, method, model in (("/v1/generate", "post", GenerateResponse), ("/v1/score", "post", ScoreResponse),
                                ("/v1/next", "post", NextResponse), ("/v1/models", "get", ModelsResponse),
                                ("/healthz", "get", Health)):
        described = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert described == {"$ref": f"#/components/schemas/{model.__name__}"}, path
    assert '"additionalProperties": false' not in json.dumps(spec["components"]["schemas"]["GenerateResponse"])
    # The real answers hold what the models describe, none missing and no field more (it would not come back).
    for model, answer in ((GenerateResponse, call(server, "/v1/generate", dict(prime="ab", length=5, num_samples=2))),
                          (GenerateResponse, call(server, "/v1/generate", dict(length=3, temperature=[0, 0.5, 1],
                                                                               max_repeat=None, seed=3))),
                          (ScoreResponse, call(server, "/v1/score", dict(text="abcdefg"))),
                          (NextResponse, call(server, "/v1/next", dict(prime="abc", top=2))),
                          (ModelsResponse, call(server, "/v1/models")), (Health, call(server, "/healthz"))):
        assert model.model_validate_json(answer[1]).model_dump(mode="json") == json.loads(answer[1]), model
    score_400 = spec["paths"]["/v1/score"]["post"]["responses"]["400"]["description"]
    assert "text" in score_400 and "prime" not in score_400  # its own causes, not generate's


def test_generate_round_trip(server, trained_run, monkeypatch):
    import textgen.generate
    from textgen.generate import generate

    body = dict(prime="abc", length=60, temperature=[0.0, 1.0], seed=4, num_samples=2)
    status, text = call(server, "/v1/generate", body)
    assert status == 200, text
    answer = json.loads(text)
    assert [(s["temperature"], s["index"]) for s in answer["samples"]] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    assert all(len(s["text"]) == 63 and s["text"].startswith("abc") and set(s["text"]) <= set(PERIOD)
               for s in answer["samples"])
    [greedy] = generate(trained_run["checkpoint_dir"], "period", prime="abc", length=60, temperatures=[0.0])
    assert answer["samples"][0]["text"] == answer["samples"][1]["text"] == greedy.text
    # The server's batcher draws as generate() does: the same four texts (and at 1.0 not twice the same).
    expected = generate(trained_run["checkpoint_dir"], "period", prime="abc", length=60, temperatures=[0.0, 1.0],
                        num_samples=2, seed=4)
    assert [s["text"] for s in answer["samples"]] == [sample.text for sample in expected]
    assert answer["options"]["run"] == "period" and answer["options"]["seed"] == 4
    text = call(server, "/v1/generate", dict(prime="ab", length=50, temperature=0, stop="f"))[1]
    seed = json.loads(text)["options"]["seed"]  # none was given: the one drawn for the request
    assert text == \
        '{"options":{"run":"period","prime":"ab","length":50,"temperature":0.0,"top_k":null,"top_p":null,' \
        f'"min_p":null,"max_repeat":20,"seed":{seed},"stop":"f","num_samples":1,"skip_unknown":false}},' \
        '"samples":[{"text":"abcde",' \
        '"temperature":0.0,"index":0,"stopped":true}],"warnings":[]}'
    answer = json.loads(call(server, "/v1/generate", dict(prime="ab", length=50, temperature=0, stop=["fg", "e"]))[1])
    assert (answer["samples"][0]["text"], answer["options"]["stop"]) == ("abcd", ["fg", "e"])
    # The runs the repeat guard ended are told, in the JSON field's name, in the answer and in a stream's end
    monkeypatch.setattr(textgen.generate, "REPEATS_TOLD_FROM", 1)  # (the tiny model's runs are short)
    guarded = dict(prime="a", length=200, temperature=100, seed=3, max_repeat=2)
    told = json.loads(call(server, "/v1/generate", guarded)[1])["warnings"]
    assert len(told) == 1 and told[0].startswith('the repeat guard ("max_repeat": 2) ended ') and told[0].endswith(
        'needs a larger max_repeat, or "max_repeat": 0 for no guard'), told
    streamed = call(server, "/v1/generate", dict(guarded, stream=True))[1]
    assert json.loads(streamed.split("event: done\ndata: ")[1])["warnings"] == told


def fields(value):
    """A JSON value's shape: its keys all the way down (a list of objects or lists by its first item; any other list,
    empty or not, as a list), not its values."""
    if isinstance(value, dict):
        return {key: fields(item) for key, item in value.items()}
    if isinstance(value, list):
        return [fields(value[0])] if value and isinstance(value[0], (dict, list)) else []
    return None


def readme_calls() -> list[tuple[str, dict, str]]:
    """The README's curl examples of the API: (path, JSON body or None for a GET, the answer shown)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8").replace("\\\n    ", "")
    found = re.findall(r"^\$ curl -sN? localhost:8765(/\S+)( -H 'Content-Type: application/json')?(?: -d '(.*?)')?"
                       r"[^\n]*\n(.*?)(?=^\$ |^```)", readme, flags=re.M | re.S)
    return [(path, json.loads(body) if body else None, answer) for path, header, body, answer in found if header or
            not body]  # (the one without the header is curl's form, refused)


def test_the_readmes_example_answers_have_the_servers_fields(server):
    """The README's answers, run by hand, are checked here field by field against this server's (the texts and
    numbers are the demo's), so that a field added or renamed cannot leave them behind unseen."""
    examples = readme_calls()
    assert [path for path, _, _ in examples] == ["/v1/models", "/v1/generate", "/v1/generate", "/v1/score", "/v1/next",
                                                "/v1/generate", "/v1/generate"]
    for path, body, shown in examples:
        asked = None if body is None else {**body, **{key: "abc" for key in ("prime", "text") if key in body}}
        status, text = call(server, path, asked)
        if asked and asked.get("stream"):
            shown_events, events_sent = events(shown), events(text)
            assert [event.split("data: ")[0] for event in shown_events] == \
                [event.split("data: ")[0] for event in events_sent][:len(shown_events)]
            assert [fields(json.loads(event.split("data: ")[1])) for event in shown_events] == \
                [fields(json.loads(event.split("data: ")[1])) for event in events_sent], (path, body)
            continue
        assert fields(json.loads(text)) == fields(json.loads(shown)), (path, body, text)
        assert (status == 200) == ("error" not in json.loads(shown)), (path, body, text)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_without_a_seed_is_told_the_seed_that_gives_its_text_again(server, stream):
    """"seed": null came back: a text a client liked could not be asked for again."""
    request = dict(prime="a", length=80, temperature=100.0, num_samples=2, stream=stream)  # near uniform: never alike
    status, text = call(server, "/v1/generate", request)
    if stream:
        blocks = events(text)
        seed = json.loads(blocks[-1].split("\n", 1)[1][len("data: "):])["seed"]
        pieces = [json.loads(block[len("data: "):]) for block in blocks[:-1]]
        texts = ["a" + "".join(piece["text"] for piece in pieces if piece.get("sample") == i) for i in (0, 1)]
    else:
        answer = json.loads(text)
        seed, texts = answer["options"]["seed"], [sample["text"] for sample in answer["samples"]]
    assert status == 200 and isinstance(seed, int) and 0 <= seed < 2**31 and texts[0] != texts[1]
    again = json.loads(call(server, "/v1/generate", dict(request, seed=seed, stream=False))[1])
    assert [sample["text"] for sample in again["samples"]] == texts
    other = json.loads(call(server, "/v1/generate", dict(request, stream=False))[1])
    assert other["options"]["seed"] != seed and [sample["text"] for sample in other["samples"]] != texts
    # Not for several temperatures: with one seed their samples share the draws ([1.0, 1.0]: one text twice)
    several = json.loads(call(server, "/v1/generate", dict(request, temperature=[100.0, 100.0], stream=False))[1])
    assert several["options"]["seed"] is None and len({sample["text"] for sample in several["samples"]}) == 4


def test_a_seeded_request_gives_the_same_text_alone_or_batched_with_others(server):
    request = dict(prime="ab", length=150, temperature=1.2, top_k=4, seed=21, num_samples=2)
    alone = call(server, "/v1/generate", request)[1]
    others = [dict(prime="g", length=300, temperature=0.9, top_p=0.8, seed=i) for i in range(6)]
    with ThreadPoolExecutor(8) as pool:
        noise = [pool.submit(call, server, "/v1/generate", body) for body in others]
        time.sleep(0.05)  # the others are already generating when it joins
        batched = pool.submit(call, server, "/v1/generate", request).result()[1]
        assert all(future.result()[0] == 200 for future in noise)
    assert json.loads(batched)["samples"] == json.loads(alone)["samples"]
    texts = [s["text"] for s in json.loads(alone)["samples"]]
    assert texts[0] != texts[1]  # two samples of one request differ


def wait_for_health(process, base: str) -> None:
    """Until the server process answers /healthz (it loads TensorFlow and the run first)."""
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError):
            if call(base, "/healthz", timeout=5)[0] == 200:
                return
        assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


def events(text):
    return [block for block in text.split("\n\n") if block]


def test_streaming_sends_the_text_as_server_sent_events(server, caplog):
    status, text = call(server, "/v1/generate", dict(prime="abc", length=300, temperature=0.7, seed=9, stream=True))
    assert status == 200
    blocks = events(text)
    assert blocks[-1] == 'event: done\ndata: {"stopped": false, "samples": [{"temperature": 0.7, "index": 0, ' \
                         '"stopped": false}], "seed": 9, "warnings": []}'
    messages = [json.loads(block[len("data: "):]) for block in blocks[:-1]]
    pieces = [message["text"] for message in messages]
    assert len(pieces) >= 3 and messages[0] == {"text": "abc", "prime": True}
    assert all(message.keys() == {"text", "sample"} and message["sample"] == 0 for message in messages[1:])
    _, whole = call(server, "/v1/generate", dict(prime="abc", length=300, temperature=0.7, seed=9))
    assert "".join(pieces) == json.loads(whole)["samples"][0]["text"]
    # The prime as the model reads it is marked, whatever was typed; a prime that lost every character has none.
    for prime, marked in (("abxc", {"text": "abc", "prime": True}), ("xyz", None)):
        body = dict(prime=prime, length=20, temperature=0, stream=True, skip_unknown=True)
        with caplog.at_level(logging.WARNING, logger="textgen"):
            first = json.loads(events(call(server, "/v1/generate", body)[1])[0][len("data: "):])
        assert (first if marked else first.get("prime")) == marked
    # dropping them was asked for, and the answer says so: the server's log keeps one line per request
    assert not [record for record in caplog.records if "dropped" in record.getMessage()]
    told = ["dropped 2 unknown characters from the prime: 'x' 'y'"]
    status, text = call(server, "/v1/generate", dict(prime="axby", length=5, temperature=0, skip_unknown=True))
    assert (status, json.loads(text)["warnings"]) == (200, told)  # (its options echo the prime as typed: "axby")
    done = events(call(server, "/v1/generate", dict(prime="axby", length=5, skip_unknown=True, stream=True))[1])[-1]
    assert json.loads(done.split("data: ", 1)[1])["warnings"] == told


def test_a_stop_string_the_model_cannot_produce_is_told_in_the_answer(server):
    """The command line and the Python API warned of it; the server said nothing, and the sample ran to its length
    as if the stop string had been looked for."""
    request = dict(prime="ab", length=30, temperature=0, stop=["xy", "ga", "é"])
    expected = ["the stop string 'xy' can never end a sample: the model never saw 'x' 'y'",
                "the stop string 'é' can never end a sample: the model never saw 'é'"]
    status, text = call(server, "/v1/generate", request)
    assert status == 200 and json.loads(text)["warnings"] == expected
    done = events(call(server, "/v1/generate", dict(request, stream=True))[1])[-1]
    assert json.loads(done.split("data: ", 1)[1])["warnings"] == expected
    assert json.loads(call(server, "/v1/generate", dict(request, stop="ga"))[1])["warnings"] == []


def test_one_stream_carries_every_sample_of_a_request(server):
    """The playground opened one streaming request per sample, and a browser opens at most 6 connections to a
    server: samples 7 and 8 waited for others to end. Now one request streams them all, each piece numbered."""
    request = dict(prime="ab", length=200, temperature=[0.6, 1.5], num_samples=2, seed=4, stop="gab")
    status, text = call(server, "/v1/generate", dict(request, stream=True))
    assert status == 200
    blocks = events(text)
    assert blocks[-1].startswith("event: done\n")
    done = json.loads(blocks[-1].split("data: ", 1)[1])
    messages = [json.loads(block[len("data: "):]) for block in blocks[:-1]]
    assert messages[0] == {"text": "ab", "prime": True}
    texts = ["ab"] * 4
    for message in messages[1:]:
        texts[message["sample"]] += message["text"]
    whole = json.loads(call(server, "/v1/generate", request)[1])["samples"]
    assert texts == [sample["text"] for sample in whole] and len(set(texts)) > 1
    assert done["samples"] == [{key: sample[key] for key in ("temperature", "index", "stopped")} for sample in whole]
    assert [(sample["temperature"], sample["index"]) for sample in whole] == \
        [(t, i) for t in (0.6, 1.5) for i in range(2)]
    assert any(sample["stopped"] for sample in whole)  # the stop string held back and cut per sample


def test_score(server):
    status, text = call(server, "/v1/score", dict(text="abcdefg" * 20))
    result = json.loads(text)
    assert status == 200 and result["characters"] == 139 and result["bpc"] < 0.5 and result["run"] == "period"


def test_a_text_within_the_score_limit_is_accepted_however_json_escapes_it(server):
    """json.dumps writes each Chinese character as a 6-byte escape: 19,000 characters made a body over the fixed
    64 KB limit, refused with 413 though the text limit is 20,000 characters."""
    text = "中" * 12000 + "abcdefg" * 1000
    assert len(json.dumps(dict(text=text))) > 65536
    status, answer = call(server, "/v1/score", dict(text=text))
    assert status == 200 and json.loads(answer)["characters"] == 6999


def test_32_concurrent_requests_all_complete_with_their_lengths(server):
    def one(i):
        return call(server, "/v1/generate", dict(prime="a", length=20 + i, temperature=0.8, seed=i), timeout=300)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    for i, (status, text) in enumerate(results):
        assert status == 200, text
        [sample] = json.loads(text)["samples"]
        assert len(sample["text"]) == 21 + i and set(sample["text"]) <= set(PERIOD)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_frees_its_stream(server, monkeypatch, stream, caplog):
    import logging

    from textgen.engine import Engine
    from textgen.serve import DISCONNECT_POLL_S

    steps = []
    original = Engine.sample

    def counted(self, *args, **kwargs):
        steps.append(args[0])
        # a tiny model is too fast to catch mid-stream otherwise; a non-streamed request polls its client
        time.sleep(0.05 if stream else 2 * DISCONNECT_POLL_S)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Engine, "sample", counted)
    batcher = SERVED["app"].state.runs.get("period").batcher
    body = json.dumps(dict(prime="a", length=1000, temperature=1.0, stream=stream)).encode()
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        if stream:
            received = b""
            for _ in range(100):
                received += connection.recv(4096)
                if received.count(b"data: ") >= 3:
                    break
            assert received.count(b"data: ") >= 3  # streaming
        else:  # nothing comes before the end: wait until its stream is generating
            deadline = time.monotonic() + 30
            while len(steps) < 2:
                assert time.monotonic() < deadline, "the request did not start generating"
                time.sleep(0.01)
        assert batcher.active()  # holding a stream
    deadline = time.monotonic() + 30
    with caplog.at_level(logging.INFO, logger="textgen"):
        while batcher.active():
            assert time.monotonic() < deadline, "the stream stayed in the batch after its client left"
            time.sleep(0.01)
        time.sleep(0.2)
    assert sum(steps) < 1000  # it left early, not by finishing
    if not stream:  # uvicorn logs a request when its response starts: this one had none, and no line
        assert [record.getMessage().split('" ')[1] for record in caplog.records if "went away" in record.getMessage()
                ][0].startswith("went away after ") and "of 1000 characters; its generation stopped" in caplog.text
    status, _ = call(server, "/v1/generate", dict(prime="a", length=10, temperature=0), timeout=60)
    assert status == 200


BAD_BODIES = [
    (b"{not json", 422), (b"[]", 422), (b'"text"', 422), (b"", 422),
    (json.dumps(dict(length="ten")).encode(), 422), (json.dumps(dict(length=10 ** 9)).encode(), 400),
    (json.dumps(dict(length=-1)).encode(), 400), (json.dumps(dict(temperature=-0.5)).encode(), 400),
    (b'{"temperature": NaN}', 400), (json.dumps(dict(temperature=[])).encode(), 400),
    (json.dumps(dict(top_k=0)).encode(), 400), (json.dumps(dict(top_p=1.5)).encode(), 400),
    (json.dumps(dict(num_samples=99)).encode(), 400), (json.dumps(dict(run="../x")).encode(), 400),
    (json.dumps(dict(run="missing")).encode(), 404), (json.dumps(dict(prime="xyz")).encode(), 400),
    (json.dumps(dict(unknown_field=1)).encode(), 422), (json.dumps(dict(seed=-2)).encode(), 400),
    (json.dumps(dict(temperature=[0.5, 1.0], num_samples=3, stream=True)).encode(), 400),  # 6 > --max-samples
    (json.dumps(dict(prime="a" * 400000)).encode(), 413),
    (json.dumps(dict(prime="a" * 5000)).encode(), 400),
]


def test_run_names_an_http_client_gets_wrong_are_told_in_its_terms(server):
    """"run": "" served the default run, where null means that and the command line and Python refuse an empty
    name; "../etc" was answered with command-line advice (--checkpoint-dir .. --run etc)."""
    for body in (dict(run=""), dict(run="", text="abc")):
        status, text = call(server, "/v1/score" if "text" in body else "/v1/generate", body)
        assert (status, json.loads(text)) == (400, {"error": "run is empty; leave it out (or null) for the server's "
                                                             "default run, or name one that GET /v1/models lists"})
    status, text = call(server, "/v1/generate", dict(run="../etc"))
    assert (status, json.loads(text)) == (400, {"error": "invalid run name '../etc'; name one of the runs GET "
                                                         "/v1/models lists"})
    assert call(server, "/v1/generate", dict(run="nowhere"))[0] == 404
    for path in ("/v1/generate/", "/v2/generate"):  # the first was a 307 with an empty body (curl printed nothing)
        status, text = call(server, path, dict(length=5))
        assert (status, json.loads(text)) == (404, {"error": f"no such path {path}; GET /v1/openapi.json lists the "
                                                             "API's paths"})
    with pytest.raises(urllib.error.HTTPError) as refused:  # a GET where only POST is served
        urllib.request.urlopen(server + "/v1/generate", timeout=60)
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "POST"  # RFC 9110 asks for it
    assert json.loads(refused.value.read()) == {"error": '/v1/generate takes POST, not GET; send for instance '
                                                         '{"prime": "The ", "length": 100}'}  # was "Method Not Allowed"


def preflight(base, origin, headers="content-type"):
    """A browser's CORS preflight for a POST to /v1/generate from a page of origin, sending headers: (status,
    headers, the error's message or None)."""
    request = urllib.request.Request(base + "/v1/generate", method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, None
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())["error"]


def test_origins_given_may_call_the_api_from_a_browser(server, trained_run):
    """No CORS: a page on another origin (a web app in development) could not call the API at all."""
    from textgen.serve import Limits, create_app

    status, headers, message = preflight(server, "http://localhost:3000")  # by default, none
    assert status == 405 and "Access-Control-Allow-Origin" not in headers
    assert message == "a page from http://localhost:3000 asks to call /v1/generate (a browser's CORS preflight); " \
                      "start the server with --allow-origin http://localhost:3000 to let it"  # not "takes POST"
    app = create_app(trained_run["checkpoint_dir"], "period", Limits(), allow_origins=("http://localhost:3000",))
    with serving(app) as base:
        status, headers, _ = preflight(base, "http://localhost:3000")
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert "POST" in headers["Access-Control-Allow-Methods"]
        # an origin not given, told in JSON as every error (it was the plain text "Disallowed CORS origin")
        assert preflight(base, "http://elsewhere.example")[::2] == (400, (
            "this server lets pages from http://localhost:3000 call it, not http://elsewhere.example; start it with "
            "--allow-origin http://elsewhere.example as well"))
        assert preflight(base, "http://localhost:3000", "content-type, X-Token")[::2] == (
            400, "a page may send the headers accept, accept-language, content-language, content-type, not X-Token")
        assert preflight(base, "null")[2].endswith("start it with --allow-origin '*' as well")  # a page from a file
        request = urllib.request.Request(base + "/v1/generate", data=json.dumps(dict(length=5, stream=True)).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Origin": "http://localhost:3000"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
            assert response.headers["X-Accel-Buffering"] == "no"  # a proxy (nginx) passes the stream on at once
            assert b"event: done" in response.read()

        def failing(paths):
            raise RuntimeError("a bug")

        app.state.runs.describe_all = failing  # an answer nobody foresaw is told to the page too (it had no header)
        for origin, expected in (("http://localhost:3000", "http://localhost:3000"), ("http://elsewhere", None)):
            request = urllib.request.Request(base + "/v1/models", headers={"Origin": origin})
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(request, timeout=60)
            assert failed.value.code == 500 and failed.value.headers["Access-Control-Allow-Origin"] == expected


def test_500_malformed_requests_each_get_a_4xx_and_the_server_keeps_answering(server):
    rng = random.Random(3)
    for i in range(500):
        raw, expected = BAD_BODIES[i % len(BAD_BODIES)] if i < 300 else (bytes(rng.getrandbits(8) for _ in range(
            rng.randint(1, 200))), None)
        status, text = call(server, "/v1/generate" if i % 7 else "/v1/score", raw=raw)
        assert 400 <= status < 500, (raw[:80], status, text)
        if expected is not None and i % 7:
            assert status == expected, (raw[:80], text)
        message = json.loads(text)["error"]
        assert isinstance(message, str) and "\n" not in message and message
    assert call(server, "/healthz")[0] == 200
    assert json.loads(call(server, "/v1/generate", dict(prime="a", length=5, temperature=0))[1])["samples"]


def test_a_chunked_body_over_the_limit_is_refused_without_a_content_length(server):
    host, port = server.removeprefix("http://").split(":")
    from textgen.config import Limits

    limit = Limits().max_body_bytes
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        # One chunk announced at 80,000 bytes, of which one byte over the limit is sent: the server must answer
        # before the body ends, and having read all that was sent, it closes without resetting the connection
        # (bytes left unread when it closes would make the answer race a reset).
        connection.sendall(f"{limit + 20000:x}\r\n".encode() + b'{"prime": "' + b"a" * (limit + 1 - 11))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body) == {"error": f"request body larger than {limit:,} bytes; a prime may hold 4,000 "
                                         "characters and a text to score 20,000 (limits in GET /v1/models)"}
    assert call(server, "/healthz")[0] == 200



def test_the_prime_and_score_limits_are_the_servers_options(trained_run, monkeypatch):
    """--max-prime-chars and --max-score-chars reach the server; the body limit follows from them."""
    from click.testing import CliRunner

    import textgen.serve
    from textgen.cli import cli
    from textgen.config import MAX_STOP_CHARS, MAX_STOPS
    from textgen.serve import create_app

    given = {}
    monkeypatch.setattr(textgen.serve, "serve", lambda *args, **options: given.update(limits=args[4]))
    result = CliRunner().invoke(cli, ["serve", "--checkpoint-dir", str(trained_run["checkpoint_dir"]),
                                      "--max-prime-chars", "5", "--max-score-chars", "30"])
    assert result.exit_code == 0, result.output
    limits = given["limits"]
    assert (limits.max_prime_chars, limits.max_score_chars) == (5, 30)
    with serving(create_app(trained_run["checkpoint_dir"], "period", limits)) as base:
        assert json.loads(call(base, "/v1/models")[1])["limits"]["max_prime_chars"] == 5
        assert call(base, "/v1/generate", dict(prime="abcab", length=3))[0] == 200
        # the most a request may hold, each character escaped by JSON as 12 bytes, is within the body limit (a lower
        # --max-score-chars alone refused a request's allowed stop strings with a 413)
        most = dict(prime="abcab", length=3, stop=["\U0001F600" * MAX_STOP_CHARS] * MAX_STOPS)
        assert call(base, "/v1/generate", most)[0] == 200
        refusals = [call(base, "/v1/generate", dict(prime="abcabc", length=3)),
                    call(base, "/v1/score", dict(text="ab" * 16)),
                    call(base, "/v1/score", raw=b" " * (limits.max_body_bytes + 1))]
        assert [(status, json.loads(body)["error"]) for status, body in refusals] == [
            (400, "prime must be at most 5 characters on this server, got 6"),
            (400, "text must be at most 30 characters on this server, got 32"),
            (413, f"request body larger than {limits.max_body_bytes:,} bytes; a prime may hold 5 characters and a "
                  "text to score 30 (limits in GET /v1/models)")]
    for option, least in (("--max-prime-chars", 1), ("--max-score-chars", 2)):
        refused = CliRunner().invoke(cli, ["serve", option, str(least - 1)])
        assert refused.exit_code == 2 and f"Invalid value for '{option}'" in refused.output


def json_error(raw: bytes) -> str:
    """How this Python's json module names what is wrong with raw (3.13 words a trailing comma otherwise)."""
    try:
        json.loads(raw)
    except json.JSONDecodeError as error:
        return f"{error.msg} at character {error.pos}"
    raise AssertionError(f"{raw!r} is valid JSON")


@pytest.mark.parametrize("path, raw, message", [
    ("/v1/generate", b"{not json", f"the body is not valid JSON ({json_error(b'{not json')}); send for instance "
                                   '{"prime": "The ", "length": 100}'),
    ("/v1/generate", b'{"length": 5,}', "the body is not valid JSON (" + json_error(b'{"length": 5,}') + ")"),
    ("/v1/generate", b"[]", 'the body must be a JSON object; send for instance {"prime": "The ", "length": 100}'),
    ("/v1/score", b"", 'the body must be a JSON object; send for instance {"text": "The end."}'),
    ("/v1/generate", b'{"length": "ten"}', "length: Input should be a valid integer"),
    ("/v1/generate", b'{"temperature": "hot"}', "temperature: Input should be a valid number"),  # temperature.float
    ("/v1/generate", b'{"temperature": [0.5, "hot"]}', "temperature.1: Input should be a valid number"),
    # These two got a 400 "There was an error parsing the body".
    ("/v1/generate", b'{"prime": "\xff\xfe"}', 'the body is not JSON (not UTF-8); send for instance {"prime": '
                                               '"The ", "length": 100}'),
    ("/v1/score", b"[" * 20000 + b"]" * 20000, "the body is not JSON (nested too deeply)"),
    # Python reads ints of at most 4,300 digits: this one was said to be not UTF-8, or nested too deeply
    ("/v1/generate", b'{"length": 1' + b"0" * 5000 + b"}", "the body is not JSON (it holds a number of 5,001 digits, "
                                                          "where at most 4,300 are read)"),
])
def test_a_malformed_body_is_named_with_an_example(server, path, raw, message):
    status, text = call(server, path, raw=raw)
    assert status == 422 and json.loads(text)["error"].startswith(message), text


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_sent_as_another_type_is_told_the_header(server, content_type):
    """curl -d without -H sends a form: it was told "the body must be a JSON object", which it is."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    request = urllib.request.Request(server + "/v1/generate", data=b'{"length": 10}', headers=headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 415
    assert json.loads(refused.value.read())["error"] == (
        "send the body as JSON, with the header Content-Type: application/json (curl: -H 'Content-Type: "
        "application/json'); send for instance {\"prime\": \"The \", \"length\": 100}")
    assert call(server, "/v1/generate", dict(length=10))[0] == 200  # the same body as JSON


def test_a_json_media_type_is_not_told_to_change_its_header_and_an_unknown_field_keeps_its_name(server):
    request = urllib.request.Request(server + "/v1/generate", data=b"[1, 2]",
                                     headers={"Content-Type": "application/vnd.example+json"})  # read as JSON
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 422 and json.loads(refused.value.read())["error"].startswith(
        "the body must be a JSON object")
    from textgen.serve_schema import GenerateRequest

    fields = ", ".join(GenerateRequest.model_fields)  # (a sampling option added later among them)
    assert fields.startswith("run, prime, length, temperature, top_k, ") and fields.endswith(", stream")
    status, text = call(server, "/v1/generate", raw=b'{"float": 1}')  # a field named like a union's branch
    assert (status, json.loads(text)["error"]) == (422, f"/v1/generate takes no field 'float' (its fields: {fields})")
    # pydantic's "lenght: Extra inputs are not permitted" named no field it takes
    status, text = call(server, "/v1/generate", raw=b'{"lenght": 1}')
    assert (status, json.loads(text)["error"]) == (422, "/v1/generate takes no field 'lenght'; did you mean "
                                                        f"'length'? (its fields: {fields})")
    status, text = call(server, "/v1/score", raw=b'{"text": "abc", "skip_unknown": true}')
    assert (status, json.loads(text)["error"]) == (422, "/v1/score takes no field 'skip_unknown' (its fields: run, "
                                                        "text)")
    status, text = call(server, "/v1/generate", raw=b'{"temp": 1}')  # another tool's name
    assert json.loads(text)["error"].startswith("/v1/generate takes no field 'temp'; did you mean 'temperature'?")
    status, text = call(server, "/v1/generate", raw=b'{"prompt": "abc", "max_tokens": 5, "n": 2, "x": 1}')
    assert json.loads(text)["error"].startswith("/v1/generate takes no fields 'prompt', 'max_tokens', 'n', 'x'; did "
                                                "you mean 'prime' for 'prompt', 'length' for 'max_tokens', "
                                                "'num_samples' for 'n'? (its fields: run, prime, ")
    status, text = call(server, "/v1/score", raw=b'{"txt": "abc"}')  # not "text: Field required" alone
    assert (status, json.loads(text)["error"]) == (422, "/v1/score takes no field 'txt'; did you mean 'text'? "
                                                        "(its fields: run, text)")
    names = {f"x{i}" * 30: i for i in range(30)}  # 20,000 such held the event loop 0.8 s, and were all echoed
    status, text = call(server, "/v1/generate", raw=json.dumps(names).encode())
    assert status == 422 and json.loads(text)["error"].startswith(
        "/v1/generate takes no fields 'x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0x0'... (60 characters), ")
    assert "'x9x9x9x9x9x9x9x9x9x9x9x9x9x9x9x9x9x9x9x9'... (60 characters) and 20 more (its fields: run, " in \
        json.loads(text)["error"]
    status, text = call(server, "/v1/score", raw=b'{"rnu": "period", "text": "abc"}')  # letters swapped: difflib's 0.67
    assert (status, json.loads(text)["error"]) == (422, "/v1/score takes no field 'rnu'; did you mean 'run'? "
                                                        "(its fields: run, text)")


def test_messages_are_the_clis_with_the_options_named_as_the_json_fields(server):
    """They named command-line options (--top-k), beside this server's own messages in JSON names (length ...)."""
    status, text = call(server, "/v1/generate", dict(temperature=-1))
    assert (status, json.loads(text)["error"]) == (400, "temperature must be in [0, 1e+06], got -1")
    status, text = call(server, "/v1/generate", dict(top_k=0, num_samples=2))
    assert (status, json.loads(text)["error"]) == (400, "top_k must be an integer in [1, inf), got 0")
    status, text = call(server, "/v1/generate", dict(run="missing"))
    assert (status, json.loads(text)["error"]) == (404, "no run named 'missing'; GET /v1/models lists the runs")


def test_the_serve_command_starts_logs_each_request_and_stops_on_sigterm(trained_run):
    import signal
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "textgen", "serve", "--checkpoint-dir",
                                str(trained_run["checkpoint_dir"]), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(process, base)
        rebound = urllib.request.Request(base + "/v1/models", headers={"Host": f"attacker.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:  # on loopback: only requests that name this machine
            urllib.request.urlopen(rebound, timeout=60)
        assert refused.value.code == 400 and "not for 'attacker.example'" in refused.value.read().decode()
        assert call(base, "/v1/generate", dict(prime="abc", length=10, temperature=0))[0] == 200
        assert call(base, "/v1/next", dict(prime="abxc", skip_unknown=True, temperature=5e-324))[0] == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    # uvicorn shuts down gracefully, then ends by the signal it received (exit status 143 in a shell)
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete." in stderr
    assert stdout == "" and "Traceback" not in stderr
    assert f"serving the runs in {trained_run['checkpoint_dir']} (default 'period') on http://127.0.0.1:{port}/" \
        in stderr
    assert '"POST /v1/generate HTTP/1.1" 200' in stderr and '"GET /healthz HTTP/1.1" 200' in stderr
    # /v1/next is one line too: not a warning about the characters the client asked to drop, nor NumPy's overflow
    # warning for a tiny temperature (two lines without time or level)
    nexts = stderr[stderr.index("POST /v1/generate"):stderr.index("Shutting down")].splitlines()[1:-1]
    assert len(nexts) == 1 and '"POST /v1/next HTTP/1.1" 200' in nexts[0], stderr
    # Each line with its time and level, textgen's as uvicorn's (textgen's had neither, and no line had a time).
    timed = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO: +"
    assert re.search(timed + "serving the runs in ", stderr, re.M) and re.search(timed + r"127\.0\.0\.1:\d+ - "
                                                                                 '"POST /v1/generate', stderr, re.M)


def test_the_log_level_and_format_hold_while_the_server_runs_and_are_given_back():
    from textgen.serve import _log_lines_timed

    logger, handler = logging.getLogger("textgen"), logging.StreamHandler()
    logger.addHandler(handler)
    try:
        before = logger.level, handler.formatter
        with _log_lines_timed("warning"):  # --log-level warning: no line per request, and none of textgen's notes
            assert logger.getEffectiveLevel() == logging.WARNING
            line = handler.format(logging.LogRecord("textgen", logging.WARNING, __file__, 1, "low memory", (), None))
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING: +low memory", line), line
            record = logging.LogRecord("textgen", logging.WARNING, __file__, 1, "warning: %s; using %s", ("x", "y"),
                                       None)
            line = handler.format(record)  # textgen's own "warning: " was a second level
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING: +x; using y", line), line
            assert logging.Formatter().format(record) == "warning: x; using y"  # for the handlers formatting it next
        assert (logger.level, handler.formatter) == before
    finally:
        logger.removeHandler(handler)


@pytest.mark.slow
@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_a_second_ctrl_c_cuts_the_streams_in_one_line(trained_run, second):
    """uvicorn invites a second Ctrl-C to quit at once; it printed some 70 lines of CancelledError tracebacks. A
    second SIGTERM (docker stop, systemctl stop sent twice) waited out --shutdown-timeout."""
    import signal
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "textgen", "serve", "--checkpoint-dir",
                                str(trained_run["checkpoint_dir"]), "--port", str(port), "--max-length", "10000000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(process, base)

        def stream():
            with contextlib.suppress(Exception):  # the stream is cut: that is the point
                call(base, "/v1/generate", dict(length=10_000_000, stream=True), timeout=120)

        threading.Thread(target=stream, daemon=True).start()
        time.sleep(2)  # the stream runs (10 million characters: minutes)
        process.send_signal(signal.SIGINT)
        time.sleep(1)
        process.send_signal(getattr(signal, second))
        signalled = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
        stopped = time.monotonic() - signalled
    finally:
        process.kill()
    assert stopped < 5  # not the 6 s left of the default --shutdown-timeout 7
    assert "waiting up to 7 s (--shutdown-timeout)" in stderr  # the default
    assert "Traceback" not in stderr and "CancelledError" not in stderr
    said = "Ctrl-C" if second == "SIGINT" else "SIGTERM"
    assert f"stopping at once (a second {said}): cutting short the requests still running" in stderr
    # stopping was what Ctrl-C asked for, not "aborted" (130); after a SIGTERM, the signal's status
    assert process.returncode == (0 if second == "SIGINT" else -signal.SIGTERM) and stdout == ""


def cut_stream(pieces, sent_before_full: int) -> list:
    """The ASGI messages a _ClosingStream of pieces sends through a fake uvicorn whose connection is full after
    sent_before_full messages, when the stream is cancelled then (as uvicorn cancels a request at the end of the
    shutdown's grace period), the connection freeing 50 ms later."""
    import asyncio

    from textgen.serve import _ClosingStream

    async def cancelled_while_full() -> list:
        loop, writable, sent = asyncio.get_running_loop(), asyncio.Event(), []
        writable.set()

        async def send(message):
            await writable.wait()
            sent.append(message)
            if len(sent) == sent_before_full:
                writable.clear()

        async def receive():  # the client says nothing more
            await asyncio.Event().wait()

        scope = {"type": "http", "asgi": {"spec_version": "2.3"}}  # what uvicorn 0.55 declares
        response = asyncio.create_task(_ClosingStream(pieces, media_type="text/event-stream")(scope, receive, send))
        async def cut():
            while len(sent) < sent_before_full:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the next send waits for the connection to drain
            response.cancel()
            loop.call_later(0.05, writable.set)
            with contextlib.suppress(asyncio.CancelledError):
                await response

        await asyncio.wait_for(cut(), 10)  # not asyncio.timeout: Python 3.11's
        return sent

    return asyncio.run(cancelled_while_full())


def test_a_stream_cancelled_while_its_connection_is_full_still_ends_with_the_shutdown_event():
    """Starlette sends a stream from a task group whose cancelled scope cancels every later wait of that task too,
    so a stream cut while a send waited for the client to read could not send its error event either, and ended
    as if its text were whole (the grace-period test below, 1 run in 15)."""
    import asyncio

    from textgen.serve import SHUTDOWN_EVENT

    async def endless():
        while True:
            yield "data: {}\n\n"
            await asyncio.sleep(0)

    sent = cut_stream(endless(), sent_before_full=3)  # the start and two pieces
    assert [message.get("body") for message in sent[-2:]] == [SHUTDOWN_EVENT.encode(), b""]
    assert sent[-1]["more_body"] is False and sent[-2]["more_body"] is True


def test_a_whole_stream_cut_while_closing_gets_no_error_event_after_its_done_event():
    """Cut while its end waited for the connection to drain, a whole stream got the shutdown's error event after
    its "done" event: two endings."""

    async def whole():  # text and bytes, as Starlette takes them
        yield "data: {}\n\n"
        yield b"event: done\ndata: {}\n\n"

    sent = cut_stream(whole(), sent_before_full=3)  # the start and both events: the end waits
    assert [message.get("body") for message in sent[1:]] == [b"data: {}\n\n", b"event: done\ndata: {}\n\n", b""]
    assert sent[-1]["more_body"] is False


def asgi_request(path: str, body: dict) -> tuple[dict, object]:
    """An HTTP request's scope and receive, as uvicorn 0.55 gives them to the app; after the body, the client says
    nothing more."""
    import asyncio

    raw = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}
    messages = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()

    return scope, receive


def test_a_request_cut_before_its_answer_started_gets_a_503_in_json(trained_run):
    """A request the shutdown cut while its run loaded, or while it waited for the engine, got uvicorn's plain-text
    500 "Internal Server Error" (only an unstreamed generation, cut while generating, said why)."""
    import asyncio

    from textgen.serve import SHUTTING_DOWN, Limits, create_app

    app = create_app(trained_run["checkpoint_dir"], "period", Limits(max_score_chars=10_000_000))
    scope, receive = asgi_request("/v1/score", dict(text="abcdefg" * 1_000_000))  # seconds of scoring

    async def cut() -> list:
        sent = []

        async def send(message):
            sent.append(message)

        request = asyncio.create_task(app(scope, receive, send))
        await asyncio.sleep(1)  # loading the run, then scoring in a worker thread
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(request, 30)
        return sent

    try:
        sent = asyncio.run(cut())
    finally:
        app.state.runs.stop()
    assert sent[0]["status"] == 503 and dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    assert json.loads(sent[1]["body"]) == {"error": SHUTTING_DOWN}


def test_the_shutdown_waits_for_the_streams_it_cut_to_reach_their_clients(trained_run):
    """After a SIGTERM uvicorn raises the signal again as soon as its shutdown returns, which ends the process: a
    stream cut at the end of the grace period lost its error event, not yet sent or still in the buffer of a
    connection slow to read. Here the client stops reading (its connection fills), then reads slowly once the
    shutdown has begun; a connection still open when the shutdown returns is one a SIGTERM would have cut."""
    import uvicorn

    from textgen.serve import SHUTDOWN_EVENT, Limits, _Server, create_app

    app = create_app(trained_run["checkpoint_dir"], "period", Limits(max_length=10_000_000))
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # as a slow remote client's
    listening.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, timeout_graceful_shutdown=0.5, log_level="warning"))
    open_at_the_end, shutdown = [], server.shutdown

    async def watched_shutdown(sockets=None):
        await shutdown(sockets)
        open_at_the_end.append(len(server.server_state.connections))

    server.shutdown = watched_shutdown
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[listening]), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.settimeout(30)
            client.connect(listening.getsockname())
            body = json.dumps(dict(length=10_000_000, stream=True)).encode()
            client.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            received = client.recv(2000)
            time.sleep(1.5)  # generating into a connection nobody reads: full
            server.should_exit = True
            while piece := client.recv(512):
                received += piece
                time.sleep(0.002)
        thread.join(timeout=30)
    finally:
        server.should_exit = server.force_exit = True
        app.state.runs.stop()
    assert open_at_the_end == [0]
    event = SHUTDOWN_EVENT.encode()
    assert received.endswith(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)), received[-300:]


@pytest.mark.slow
def test_a_request_cut_by_the_end_of_the_shutdown_grace_period_is_told_why(trained_run):
    """uvicorn cancels what still runs when the grace period ends: the client got a plain-text 500, and a stream
    ended without its done or error event, as if the text were whole. (A stream and a plain request at once: one
    server start, ~8 s of the test run.)"""
    import signal
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "textgen", "serve", "--checkpoint-dir",
                                str(trained_run["checkpoint_dir"]), "--port", str(port), "--max-length", "10000000",
                                "--shutdown-timeout", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(process, base)
        with ThreadPoolExecutor(2) as pool:
            answers = {stream: pool.submit(call, base, "/v1/generate", dict(length=10_000_000, stream=stream),
                                           timeout=60) for stream in (False, True)}
            time.sleep(2)  # generating (10 million characters: minutes)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            (status, text), (stream_status, stream_text) = answers[False].result(), answers[True].result()
        _, stderr = process.communicate(timeout=60)
        stopped = time.monotonic() - signalled
    finally:
        process.kill()
    assert stopped < 6  # --shutdown-timeout 1, not the default 7 s (a second or two more to stop)
    shutting_down = {"error": "the server is shutting down; send the request again once it is back"}
    assert (status, json.loads(text)) == (503, shutting_down)
    last = events(stream_text)[-1]
    assert stream_status == 200 and last.startswith("event: error\ndata: ")
    assert json.loads(last.split("\n", 1)[1][len("data: "):]) == shutting_down
    assert "Traceback" not in stderr and process.returncode in (0, -signal.SIGTERM), stderr
    # uvicorn's lines, in words that say how long the wait is and that the cut was the shutdown asked for
    assert "waiting up to 1 s (--shutdown-timeout) for the requests in flight to end; a second Ctrl-C or SIGTERM " \
           "cuts them short" in stderr
    assert re.search(r"WARNING: +cut short [12] requests? still running after 1 s \(--shutdown-timeout\)", stderr)
    assert "ERROR" not in stderr and "CTRL+C to force quit" not in stderr, stderr


def test_scoring_while_generating_does_not_disturb_the_streams(server):
    request = dict(prime="abc", length=400, temperature=1.1, seed=8)
    alone = call(server, "/v1/generate", request)[1]
    with ThreadPoolExecutor(4) as pool:
        scores = [pool.submit(call, server, "/v1/score", dict(text="abcdefg" * 300)) for _ in range(6)]
        together = pool.submit(call, server, "/v1/generate", request).result()[1]
        assert all(future.result()[0] == 200 for future in scores)
    assert json.loads(together)["samples"] == json.loads(alone)["samples"]


def watch_the_one_stream_engine(monkeypatch, pause: float) -> list:
    """[the most requests that used the served run's one-stream engine at once], each holding it pause seconds more
    (long enough for the other requests to arrive meanwhile); the batcher's generation takes its engines directly."""
    served = SERVED["app"].state.runs.get(None)
    if served.batcher.warming is not None:  # its warm-up takes each engine size once, beside the requests
        served.batcher.warming.join(120)
    generator = served.generator
    running, most = [0], [0]
    engine = generator.engine

    @contextlib.contextmanager
    def watched(streams):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            time.sleep(pause)
            with engine(streams) as taken:
                yield taken
        finally:
            running[0] -= 1

    monkeypatch.setattr(generator, "engine", watched)
    return most


def test_scores_take_turns_on_one_engine(server, monkeypatch):
    most = watch_the_one_stream_engine(monkeypatch, 0.2)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: call(server, "/v1/score", dict(text="abcdefg" * 20)), range(4)))
    assert [status for status, _ in answers] == [200] * 4 and most[0] == 1


@pytest.mark.parametrize("path, body", [("/v1/score", dict(text="abcdefg" * 20)), ("/v1/next", dict(prime="abc"))])
def test_scores_waiting_their_turn_leave_the_rest_of_the_server_answering(server, monkeypatch, path, body):
    """Each score waiting for the engine held one of the server's 40 worker threads: 60 of them stalled /healthz,
    /v1/models and generation for as long as they took. /v1/next computes on the same engine, under the same lock."""
    generator = SERVED["app"].state.runs.get(None).generator
    engine, entered, release = generator.engine, threading.Event(), threading.Event()

    @contextlib.contextmanager
    def held(streams):
        entered.set()
        release.wait(120)
        with engine(streams) as taken:
            yield taken

    monkeypatch.setattr(generator, "engine", held)
    with ThreadPoolExecutor(45) as pool:
        try:
            scores = [pool.submit(call, server, path, body, timeout=180) for _ in range(45)]
            assert entered.wait(60)
            time.sleep(0.5)  # the other 44 arrive and wait
            assert call(server, "/healthz", timeout=20) == (200, '{"status":"ok"}')
            assert call(server, "/v1/models", timeout=20)[0] == 200
            status, text = call(server, "/v1/generate", dict(prime="abc", length=5, seed=1), timeout=20)
            assert status == 200, text
        finally:
            release.set()
        assert [future.result()[0] for future in scores] == [200] * 45


def test_a_loss_no_model_gives_and_an_unexpected_failure_are_json_500s(server, monkeypatch):
    """A run whose weights had turned NaN answered /v1/score with a plain-text 500 (its loss is not JSON); so did any
    exception nobody foresaw."""
    import numpy as np

    generator = SERVED["app"].state.runs.get(None).generator
    engine = generator.engine

    @contextlib.contextmanager
    def damaged(streams):
        with engine(streams) as taken:
            logits = taken.logits
            taken.logits = lambda ids: np.full_like(logits(ids), np.nan)
            try:
                yield taken
            finally:
                del taken.logits

    monkeypatch.setattr(generator, "engine", damaged)
    status, text = call(server, "/v1/score", dict(text="abcdefg" * 20))
    assert status == 500 and json.loads(text) == {
        "error": "the model's loss on this text is nan nats per character, so its weights are damaged; train again "
                 "with --overwrite"}
    monkeypatch.setattr(generator, "score", lambda text: 1 / 0)
    status, text = call(server, "/v1/score", dict(text="abcdefg" * 20))
    assert status == 500 and json.loads(text) == {
        "error": "the server failed on this request (ZeroDivisionError); its log says more"}
    assert call(server, "/healthz") == (200, '{"status":"ok"}')


@pytest.mark.parametrize("body, message", [
    (b'{"temperature": 1e39}', "temperature must be in [0, 1e+06], got 1e+39"),
    (b'{"length": 1' + b"0" * 400 + b"}", "length must be in [0, 1000] on this server, got a number of 401 digits"),
    (b'{"length": -1}', "length must be in [0, 1000] on this server, got -1"),  # not the general [0, 1e+07]
    (b'{"num_samples": 0}', "num_samples must be an integer in [1, 4] on this server, got 0"),  # not [1, 10000]
    (b'{"num_samples": 1' + b"0" * 400 + b"}", "at most 4 samples per request (temperatures x num_samples), got a "
                                                 "number of 401 digits"),
    (b'{"max_repeat": 9' + b"9" * 400 + b"}", "max_repeat must be an integer in [0, 1e+09], got a number of 401 "
                                                "digits"),
    (b'{"length": 5, "stop": "\\ud800"}', "stop holds a lone surrogate (\\ud800) at character 0, which is not "
                                             "text; send UTF-8 text"),
    (b'{"prime": "a\\udcff", "skip_unknown": true}', "prime holds a lone surrogate (\\udcff) at character 1"),
    (b'{"length": 5, "stop": ""}', "stop is empty; give the text, or leave stop out"),
    (b'{"length": 5, "stop": []}', "stop needs at least one text, or leave stop out"),
    (b'{"length": 5, "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q"]}',
     "at most 16 stop strings, got 17"),
    # The field as JSON has it: it said --skip-unknown.
    (b'{"prime": "xyz"}', "the prime contains characters the model never saw: 'x' 'y' 'z'; change the prime or pass "
                          '"skip_unknown": true to drop them'),
])
def test_numbers_no_float_holds_and_lone_surrogates_are_the_requests_fault(server, body, message):
    status, text = call(server, "/v1/generate", raw=body)
    assert status == 400 and json.loads(text)["error"].startswith(message)


def test_a_lone_surrogate_to_score_is_a_400(server):
    status, text = call(server, "/v1/score", raw=b'{"text": "\\ud800abc"}')
    assert (status, json.loads(text)["error"]) == (400, "text holds a lone surrogate (\\ud800) at character 0, "
                                                        "which is not text; send UTF-8 text")


def test_next_gives_the_python_apis_distribution_the_likeliest_first(server, trained_run):
    import textgen

    model = textgen.load(trained_run["run_dir"])
    for body in (dict(prime="abcdefgabc"), dict(prime="abc", temperature=2.0), dict(prime="abc", temperature=0),
                 dict(prime="", temperature=1), dict(prime="abxc", skip_unknown=True), dict(prime="abc", top=2)):
        status, text = call(server, "/v1/next", body)
        assert status == 200, (body, text)
        answer = json.loads(text)
        expected = model.next_char_probabilities(body["prime"], body.get("temperature", 1.0),
                                                 body.get("skip_unknown", False))
        pairs = [(each["character"], each["probability"]) for each in answer["probabilities"]]
        assert pairs == list(expected.items())[:body.get("top")], body  # the same engine step: the same numbers
        assert (answer["run"], answer["temperature"]) == ("period", float(body.get("temperature", 1.0)))
        # what skip_unknown dropped is said (the answer did not tell that the model read "abc")
        assert answer["warnings"] == (["dropped 1 unknown character from the prime: 'x'"] if "x" in body["prime"]
                                      else [])
    answer = json.loads(call(server, "/v1/next", dict(prime="abcdefgabc", top=100))[1])
    assert [each["character"] for each in answer["probabilities"]][0] == "d" and len(answer["probabilities"]) == 7


@pytest.mark.parametrize("body, status, message", [
    (b'{"prime": "abc", "temperature": -1}', 400, "temperature must be in [0, 1e+06], got -1"),
    (b'{"temperature": NaN}', 400, "temperature must be in [0, 1e+06], got nan"),
    (b'{"temperature": [0.5, 1.0]}', 422, "temperature: Input should be a valid number"),
    (b'{"prime": "xyz"}', 400, "the prime contains characters the model never saw: 'x' 'y' 'z'; change the prime or "
                               'pass "skip_unknown": true to drop them'),
    (b'{"prime": "a\\udcff", "skip_unknown": true}', 400, "prime holds a lone surrogate (\\udcff) at character 1"),
    (b'{"prime": "abc", "top": 0}', 400, "top must be an integer in [1, inf), got 0"),
    (b'{"prime": "abc", "top": 2.0}', 422, "top: Input should be a valid integer"),
    (b'{"run": "../x"}', 400, "invalid run name '../x'; name one of the runs GET /v1/models lists"),
    (b'{"run": ""}', 400, "run is empty; leave it out (or null) for the server's default run"),
    (b'{"run": "missing"}', 404, "no run named 'missing'; GET /v1/models lists the runs"),
    (json.dumps(dict(run="m" * 90)).encode(), 404, "no run named 'mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm'... (90 "
                                                    "characters); GET /v1/models"),  # was echoed whole
    (json.dumps(dict(run="../" * 100_000)).encode(), 400,
     "invalid run name '../../../../../../../../../../../../../.'... (300,000 characters); name one"),
    (json.dumps(dict(prime="a" * 5000)).encode(), 400, "prime must be at most 4000 characters on this server, got "
                                                      "5000"),
    (json.dumps(dict(prime="a" * 400000)).encode(), 413, "request body larger than"),
    (b'{"prime": "a", "length": 10}', 422, "/v1/next takes no field 'length' (its fields: run, prime, temperature, "
                                           "skip_unknown, top)"),
    (b"[]", 422, 'the body must be a JSON object; send for instance {"prime": "The "}'),
])
def test_next_refuses_what_generate_refuses_in_one_line(server, body, status, message):
    got, text = call(server, "/v1/next", raw=body)
    assert got == status and json.loads(text)["error"].startswith(message), text
    assert "\n" not in json.loads(text)["error"]


def test_next_while_generating_does_not_disturb_the_streams_and_takes_turns_with_scores(server, monkeypatch):
    request = dict(prime="abc", length=400, temperature=1.1, seed=8, stream=True)
    alone = call(server, "/v1/generate", request)[1]
    most = watch_the_one_stream_engine(monkeypatch, 0.1)
    with ThreadPoolExecutor(6) as pool:
        asked = [pool.submit(call, server, "/v1/next" if i % 2 else "/v1/score",
                             dict(prime="abc") if i % 2 else dict(text="abcdefg" * 20)) for i in range(8)]
        together = pool.submit(call, server, "/v1/generate", request).result()[1]
        assert [future.result()[0] for future in asked] == [200] * 8
    assert together == alone and most[0] == 1


def test_a_run_directory_can_be_served_itself_and_a_damaged_run_is_one_json_line(trained_run, tmp_path, monkeypatch):
    import shutil

    from pathlib import Path

    from textgen.served_runs import Runs

    runs = Runs(trained_run["run_dir"], None, (1, 4))  # --checkpoint-dir pointing at the run itself
    assert runs.default == "period" and runs.get(None).generator.meta.state.epoch == 3
    spaced = tmp_path / "my run"  # a folder name that textgen train would not choose, served as it is
    shutil.copytree(trained_run["run_dir"], spaced)
    monkeypatch.chdir(spaced)
    for runs in (Runs(spaced, None, (1, 4)), Runs(Path("."), None, (1, 4))):
        assert runs.default == "my run" and runs.get("my run") is runs.get(None)
        assert [model["name"] for model in runs.describe_all(runs.paths())] == ["my run"]
    copy = tmp_path / "ck"
    shutil.copytree(trained_run["run_dir"], copy / "good")
    shutil.copytree(trained_run["run_dir"], copy / "broken")
    weights = next((copy / "broken").glob("*.weights.h5"))
    weights.write_bytes(weights.read_bytes()[:100])
    from textgen.serve import create_app

    with serving(create_app(copy, "good")) as base:
        for path, body in (("/v1/generate", dict(run="broken", length=5)),
                           ("/v1/score", dict(run="broken", text="ab"))):
            status, text = call(base, path, body)  # the server's fault, not the request's: 5xx
            error = json.loads(text)["error"]
            assert status == 500 and error.startswith("run 'broken' cannot be loaded: checkpoint file ")
            assert "is corrupted (checksum mismatch)" in error
        assert call(base, "/v1/generate", dict(length=5, temperature=0))[0] == 200


def test_past_max_loaded_runs_the_least_recently_used_run_is_unloaded_and_loads_again_when_asked(trained_run,
                                                                                               tmp_path, caplog):
    import logging
    import shutil

    from textgen.serve import Limits, create_app

    for name in ("main", "b", "c"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    app = create_app(tmp_path, "main", Limits(max_loaded_runs=2))
    runs = app.state.runs
    request = dict(prime="ab", length=30, temperature=1.0, seed=5)
    with serving(app) as base, caplog.at_level(logging.INFO, logger="textgen"):
        texts = {name: json.loads(call(base, "/v1/generate", dict(request, run=name))[1])["samples"][0]["text"]
                 for name in ("b", "main")}
        assert sorted(runs._loaded) == ["b", "main"]
        first_b = runs._loaded["b"]
        assert call(base, "/v1/generate", dict(request, run="c"))[0] == 200
        assert sorted(runs._loaded) == ["c", "main"]  # b was used less recently than the default, never unloaded
        first_b.batcher.thread.join(timeout=30)
        assert first_b.batcher.closed and not first_b.batcher.thread.is_alive()  # its engine was given back
        assert "run 'b' unloaded: 2 runs are in memory and it was used least recently" in caplog.text
        again = json.loads(call(base, "/v1/generate", dict(request, run="b"))[1])["samples"][0]["text"]
        assert again == texts["b"] == texts["main"] and sorted(runs._loaded) == ["b", "main"]
        assert call(base, "/v1/score", dict(run="c", text="abcdefg"))[0] == 200
        assert sorted(runs._loaded) == ["c", "main"]
        assert len(json.loads(call(base, "/v1/models")[1])["models"]) == 3  # every run is still listed


def test_a_run_still_generating_is_unloaded_last(trained_run, tmp_path):
    """Least recently used was counted from when a request started: a run streaming a long text was unloaded, and
    the next request for it loaded a second copy while the first still ran."""
    import shutil

    from textgen.config import SampleConfig
    from textgen.served_runs import Runs

    for name in ("main", "long", "idle", "new"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    runs = Runs(tmp_path, "main", (1,), max_loaded=3)
    streaming = runs.get("long")
    job = streaming.batcher.submit(SampleConfig(length=10_000_000), lambda piece: None)  # minutes of text
    try:
        runs.get("idle")  # used after long
        runs.get("new")
        assert sorted(runs._loaded) == ["long", "main", "new"]  # not long, though used least recently
        streaming.version = ("an older checkpoint",)  # the next request loads long's newer one
        assert runs.get("long") is not streaming and streaming.batcher.retired  # which finishes the long text
        runs.get("new")  # now used after long
        runs.get("idle")
        assert sorted(runs._loaded) == ["idle", "long", "main"]  # long still generates, in its retired batcher
    finally:
        job.cancel()
    deadline = time.monotonic() + 30
    while streaming.batcher.busy():  # the cancelled job leaves at the next chunk
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runs.get("new")
    assert sorted(runs._loaded) == ["idle", "main", "new"]  # idle now: the least recently used goes
    runs.stop()


def test_a_burst_of_requests_for_a_run_being_loaded_leaves_the_server_answering(trained_run, tmp_path):
    """Each request for a run not loaded yet waited for its load in a worker thread of its own: 40 of them held
    every thread, and the whole server (other runs, GET /v1/models) waited for the load."""
    import shutil

    from textgen.serve import create_app

    for name in ("main", "new"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    app = create_app(tmp_path, "main")
    runs, loaded = app.state.runs, threading.Event()
    load = runs._load

    def slow_load(name, path):
        time.sleep(4)  # a large model
        served = load(name, path)
        loaded.set()
        return served

    runs._load = slow_load
    with serving(app) as base, ThreadPoolExecutor(60) as pool:
        burst = [pool.submit(call, base, "/v1/generate", dict(run="new", length=5)) for _ in range(50)]
        time.sleep(1)  # they are all waiting for the load
        assert call(base, "/v1/models")[0] == 200 and call(base, "/v1/generate", dict(length=5))[0] == 200
        assert not loaded.is_set()  # answered while the new run was still loading
        assert [future.result()[0] for future in burst] == [200] * 50
    assert loaded.is_set()


def test_a_reload_that_ends_after_its_run_was_unloaded_and_loaded_again_keeps_one_copy(trained_run, tmp_path):
    import shutil

    from textgen.generate import ENGINE_SIZES
    from textgen.served_runs import Runs

    for name in ("main", "b", "c"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    runs = Runs(tmp_path, "main", tuple(ENGINE_SIZES), max_loaded=2)
    stale = runs.get("b")
    stale.version = ("an older checkpoint",)
    load, entered, proceed, copies = runs._load, threading.Event(), threading.Event(), [stale]

    def slow_first_load(name, path):
        if not entered.is_set():
            entered.set()
            proceed.wait(60)
        copies.append(load(name, path))
        return copies[-1]

    runs._load = slow_first_load
    reloading = threading.Thread(target=runs.get, args=("b",))
    reloading.start()
    assert entered.wait(60)
    runs.get("c")  # unloads b while it reloads
    again = runs.get("b")  # and b is loaded again
    proceed.set()
    reloading.join(60)
    assert runs._loaded["b"] is again and sorted(runs._loaded) == ["b", "main"]
    copies = [served for served in copies if served.name == "b"]
    assert len(copies) == 3  # the stale one, the reload's and the one loaded again
    for spare in copies:
        if spare is not again:  # their batchers stop and give their engines back
            spare.batcher.thread.join(30)
            assert spare.batcher.closed and not spare.batcher.thread.is_alive()
    assert again.batcher.thread.is_alive() and not again.batcher.retired


def test_a_taken_port_is_one_line(trained_run):
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "textgen", "serve", "--checkpoint-dir",
                                 str(trained_run["checkpoint_dir"]), "--port", str(port)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose " \
                                    "another --port or stop the program that uses it"


def test_a_default_run_that_cannot_be_loaded_is_one_line_at_start_up(trained_run, tmp_path):
    """It was a 30-line traceback ending in the request error (ApiError) that a request for the run gets."""
    import shutil

    from click.testing import CliRunner

    from textgen.cli import cli

    shutil.copytree(trained_run["run_dir"], tmp_path / "broken")
    weights = next((tmp_path / "broken").glob("*.weights.h5"))
    weights.write_bytes(weights.read_bytes()[:100])
    result = CliRunner().invoke(cli, ["serve", "--checkpoint-dir", str(tmp_path), "--port", str(free_port())])
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: checkpoint file {tmp_path / 'broken'}/")  # what textgen sample says
    assert result.stderr.strip().endswith("is corrupted (checksum mismatch); train again with --overwrite or restore "
                                          "the file from a backup") and len(result.stderr.strip().splitlines()) == 1


def test_a_run_that_trains_on_is_served_from_its_new_checkpoint(trained_run, tmp_path, caplog):
    import logging
    import os
    import shutil

    from conftest import TINY_MODEL, TINY_TRAINING
    from textgen.generate import generate
    from textgen.serve import create_app
    from textgen.training import train

    served = tmp_path / "ck" / "period"
    shutil.copytree(trained_run["run_dir"], served)
    newer = tmp_path / "newer"
    train(trained_run["corpus"], newer, run="period", model_options=TINY_MODEL,  # barely trained: other text
          train_options=dict(TINY_TRAINING, epochs=1, seed=8, learning_rate=0.0005), log=lambda message: None)

    def save(metadata: dict):  # as training saves: the files first, then each metadata file renamed into place
        for path in (newer / "period").iterdir():
            if path.suffix != ".json":
                shutil.copy(path, served / path.name)
        for kind, text in metadata.items():
            (served / f"{kind}.tmp").write_text(text)
            os.replace(served / f"{kind}.tmp", served / f"{kind}.json")

    request = dict(prime="ab", length=80, temperature=1.5, seed=3)
    with serving(create_app(served.parent, "period")) as base:
        before = json.loads(call(base, "/v1/generate", request)[1])["samples"][0]["text"]
        save({kind: (newer / "period" / f"{kind}.json").read_text() for kind in ("last", "best")})
        with caplog.at_level(logging.INFO, logger="textgen"):
            [model] = json.loads(call(base, "/v1/models")[1])["models"]
            assert model["epochs"] == 1
            after = json.loads(call(base, "/v1/generate", request)[1])["samples"][0]["text"]
        val_loss = json.loads((newer / "period" / "best.json").read_text())["val_loss"]
        assert f"run 'period': serving its new checkpoint (epoch 1, validation {bpc(val_loss):.4f} bpc)" in caplog.text
        caplog.clear()
        [expected] = generate(newer, "period", prime="ab", length=80, temperatures=[1.5], seed=3)
        assert after == expected.text != before
        # a new checkpoint that cannot be loaded: the model loaded before goes on serving, with a warning
        save(dict(last="{", best="{"))
        with caplog.at_level(logging.WARNING, logger="textgen"):
            status, text = call(base, "/v1/generate", request)
            assert status == 200 and json.loads(text)["samples"][0]["text"] == after
        assert "run 'period' has a new checkpoint that cannot be loaded" in caplog.text
        assert call(base, "/v1/generate", request)[0] == 200


def test_a_request_whose_server_loop_has_closed_does_not_break_the_batcher(trained_run, caplog):
    """After a second Ctrl-C the event loop closes while the batcher still runs: delivering raised "Event loop is
    closed", logged as "generation failed" with a traceback and raised again from that handler, which killed the
    thread with a second one (the second-Ctrl-C test failed now and then on it)."""
    import asyncio

    from textgen.request_batcher import Batcher
    from textgen.config import SampleConfig
    from textgen.generate import Generator
    from textgen.serve import _deliverer

    closed = asyncio.new_event_loop()
    closed.close()
    batcher = Batcher(Generator.load(trained_run["run_dir"]), (1, 4))
    with caplog.at_level(logging.ERROR, logger="textgen"):
        batcher.submit(SampleConfig(prime="a", length=300, temperature=(1.0,), seed=1),
                       _deliverer(closed, asyncio.Queue()))
        pieces, over = [], threading.Event()
        job = batcher.submit(SampleConfig(prime="a", length=20, temperature=(0.0,)),
                             lambda piece: over.set() if piece is None else pieces.append(piece.text))
        assert over.wait(60) and job.error is None and len("".join(pieces)) == 21
    assert batcher.thread.is_alive() and not caplog.records
    batcher.retire()  # it finishes the request that delivers nowhere, then stops
    batcher.thread.join(60)
    assert not batcher.thread.is_alive()


def test_the_servers_exit_stops_every_batcher_still_generating(trained_run):
    """After a second Ctrl-C the requests were cut but their batchers went on generating in daemon threads: one
    still inside TensorFlow when the interpreter ends can abort the process ("FATAL: exception not rethrown")."""
    from textgen.config import SampleConfig
    from textgen.served_runs import ApiError, Runs

    runs = Runs(trained_run["checkpoint_dir"], None, (1, 4))
    batcher = runs.get(None).batcher
    ended = threading.Event()
    job = batcher.submit(SampleConfig(prime="a", length=10_000_000, temperature=(1.0,)),
                         lambda piece: ended.set() if piece is None else None)
    time.sleep(1)
    started = time.monotonic()
    runs.stop()
    assert ended.is_set() and job.cancelled and not batcher.thread.is_alive() and time.monotonic() - started < 10
    with pytest.raises(ApiError, match="the server is stopping") as refused:  # no batcher started after stop()
        runs.submit(None, SampleConfig(length=5), lambda piece: None)
    assert refused.value.status == 503


def test_an_unloaded_run_leaves_memory_once_its_batcher_has_stopped(trained_run, tmp_path):
    """The list of batchers kept for the exit held every model ever loaded (an evicted run, a replaced checkpoint)."""
    import gc
    import shutil
    import weakref

    from textgen.served_runs import Runs

    for name in ("a", "b", "c"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    runs = Runs(tmp_path, "a", (1,), max_loaded=2)
    evicted = runs.get("b")
    generator, thread = weakref.ref(evicted.generator), evicted.batcher.thread
    del evicted
    runs.get("c")  # b goes: the least recently used that is not the default
    thread.join(30)
    gc.collect()
    assert generator() is None
    runs.stop()


def test_a_run_deleted_while_served_is_no_longer_served_and_a_damaged_one_names_no_server_path(trained_run,
                                                                                                 tmp_path):
    """A deleted run left /v1/models but answered from memory; a damaged one gave the client absolute paths."""
    import shutil

    from textgen.serve import create_app
    from textgen.serve_schema import ModelsResponse

    for name in ("main", "gone", "broken", "later"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    weights = next((tmp_path / "broken").glob("*.weights.h5"))
    weights.write_bytes(weights.read_bytes()[:100])
    with serving(create_app(tmp_path, "main")) as base:
        # listed as a run that cannot be served, before a request finds out (it was listed with its facts)
        listed = {model["name"]: model for model in json.loads(call(base, "/v1/models")[1])["models"]}
        assert "error" not in listed["later"]  # damaged once listed: listed as such once a request has found out
        later = next((tmp_path / "later").glob("*.weights.h5"))
        whole = later.read_bytes()
        later.write_bytes(whole[:100])
        assert call(base, "/v1/generate", dict(run="later", length=5))[0] == 500
        assert {model["name"]: model for model in json.loads(call(base, "/v1/models")[1])["models"]}["later"] == \
            {"name": "later", "error": f"checkpoint file later/{later.name} is corrupted (checksum mismatch); train "
                                       "again with --overwrite or restore the file from a backup"}
        later.write_bytes(whole)  # restored: listed with its facts again, before any request loads it
        assert {model["name"]: model for model in json.loads(call(base, "/v1/models")[1])["models"]}["later"] == \
            listed["later"]
        assert listed["broken"] == {"name": "broken", "error": f"checkpoint file broken/{weights.name} is corrupted "
                                                               "(checksum mismatch); train again with --overwrite or "
                                                               "restore the file from a backup"}
        answer = json.loads(call(base, "/v1/models")[1])  # as the OpenAPI document describes such an entry
        assert ModelsResponse.model_validate(answer).model_dump(mode="json") == answer
        assert "error" not in listed["gone"] and listed["gone"]["epochs"] == listed["main"]["epochs"]
        assert call(base, "/v1/generate", dict(run="gone", length=5))[0] == 200
        shutil.rmtree(tmp_path / "gone")
        status, text = call(base, "/v1/generate", dict(run="gone", length=5))
        assert (status, json.loads(text)) == (404, {"error": "no run named 'gone'; GET /v1/models lists the runs"})
        assert "gone" not in [model["name"] for model in json.loads(call(base, "/v1/models")[1])["models"]]
        status, text = call(base, "/v1/generate", dict(run="broken", length=5))
        error = json.loads(text)["error"]
        assert status == 500 and str(tmp_path) not in error
        assert error.startswith(f"run 'broken' cannot be loaded: checkpoint file broken/{weights.name} is corrupted "
                                "(checksum mismatch)")
        request = urllib.request.Request(base + "/healthz", method="HEAD")  # was 405
        assert urllib.request.urlopen(request, timeout=30).status == 200
        shutil.rmtree(tmp_path / "main")  # the default run: no longer named as the default
        models = json.loads(call(base, "/v1/models")[1])
        assert models["default"] is None and "main" not in [model["name"] for model in models["models"]]
        status, text = call(base, "/v1/generate", dict(length=5))
        # (it said "no run named 'main'" to a request that named none)
        assert (status, json.loads(text)) == (404, {"error": "the server's default run, 'main', is gone; name a run "
                                                             "(GET /v1/models lists them)"})
        status, text = call(base, "/v1/generate", dict(length=5, run="main"))
        assert (status, json.loads(text)) == (404, {"error": "no run named 'main'; GET /v1/models lists the runs"})


def test_a_run_deleted_while_its_new_checkpoint_loads_is_not_served_from_memory(trained_run, tmp_path):
    """A reload that failed because the run had gone recorded its version as (), which then equalled the ()
    of a run with no checkpoint: the run counted as current and was served for good."""
    import shutil

    from textgen.served_runs import ApiError, Runs

    for name in ("main", "gone"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    runs = Runs(tmp_path, "main", (1,))
    served = runs.get("gone")
    shutil.rmtree(tmp_path / "gone")
    served.version = ()  # what the failed reload left
    with pytest.raises(ApiError, match="no run named 'gone'") as refused:
        runs.get("gone")
    assert refused.value.status == 404 and "gone" not in runs._loaded


def test_an_ipv6_host_is_served(trained_run):
    """--host ::1 was refused ('Address family for hostname not supported'): the port check was IPv4 only."""
    import subprocess
    import sys

    with socket.socket(socket.AF_INET6) as taken:
        try:
            taken.bind(("::1", 0))
        except OSError:
            pytest.skip("this machine has no IPv6 loopback")
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "textgen", "serve", "--checkpoint-dir",
                                 str(trained_run["checkpoint_dir"]), "--host", "::1", "--port", str(port)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip() == f"error: cannot listen on [::1]:{port} (Address " \
                                                               "already in use); choose another --port or stop the " \
                                                               "program that uses it"
    port = free_port()
    with subprocess.Popen([sys.executable, "-m", "textgen", "serve", "--checkpoint-dir",
                           str(trained_run["checkpoint_dir"]), "--host", "::1", "--port", str(port)],
                          stderr=subprocess.PIPE, text=True) as server:
        try:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(OSError):
                    assert call(f"http://[::1]:{port}", "/healthz", timeout=5) == (200, '{"status":"ok"}')
                    break
                assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.2)
        finally:
            server.terminate()
            server.wait(60)
        assert f"on http://[::1]:{port}/" in server.stderr.read()


def test_a_host_name_with_several_addresses_is_refused_when_any_of_them_is_taken(trained_run, monkeypatch):
    """localhost as ::1 and 127.0.0.1 (Debian's /etc/hosts): only ::1 was checked, then the server loaded the model
    and uvicorn failed to bind 127.0.0.1 (a traceback, exit code 3)."""
    from textgen.errors import TextgenError
    from textgen.serve import serve

    with socket.socket(socket.AF_INET6) as free, socket.socket() as taken:
        try:
            free.bind(("::1", 0))
        except OSError:
            pytest.skip("this machine has no IPv6 loopback")
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        both = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: both)
        with pytest.raises(TextgenError, match=f"cannot listen on localhost:{port} \\(Address already in use\\)"):
            serve(trained_run["checkpoint_dir"], None, "localhost", port)


def test_the_server_holds_its_port_while_the_runs_load_and_raises_its_open_file_limit(trained_run, monkeypatch):
    """Two servers started together on one port both passed the check (a probe, closed again), loaded their runs,
    and uvicorn failed to bind the second: a log saying it served, then exit code 3. And each connection holds a
    descriptor: at systemd's default soft limit of 1,024 a few hundred idle clients stopped the server."""
    import errno
    import resource

    from textgen import serve as serve_module

    class Loaded(Exception):
        pass

    seen = {}

    def load_runs(*args, **kwargs):  # what another server starting now would meet, and the limit by then
        with socket.socket() as second:
            second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                second.bind(("127.0.0.1", port))
                second.listen()
            except OSError as error:
                seen["second"] = error.errno
        seen["limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise Loaded

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"this machine's hard limit on open files is {hard} (the test raises the soft one to it)")
    port = free_port()
    monkeypatch.setattr(serve_module, "create_app", load_runs)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with pytest.raises(Loaded) as failed:
            serve_module.serve(trained_run["checkpoint_dir"], None, "127.0.0.1", port)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert seen == {"second": errno.EADDRINUSE, "limit": (hard, hard)}
    with socket.socket() as after:  # and the port is given back when loading fails (its error held here)
        after.bind(("127.0.0.1", port))
        after.listen()
    assert failed.value is not None


def test_a_connection_that_sends_no_request_head_is_closed(monkeypatch):
    """uvicorn times a connection out only between requests: one that connected and sent nothing, or half a
    request's head, held its descriptor for good (300 of 300 were open 9 s later)."""
    from textgen import serve as serve_module

    async def app(scope, receive, send):
        if scope["type"] == "http":
            if scope["path"] == "/slow":  # a response that takes longer than a head may
                await asyncio.sleep(1)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    monkeypatch.setattr(serve_module, "HEAD_TIMEOUT_S", 0.5)
    with serving(app, http=serve_module._H11WithHeadTimeout) as base:
        port = int(base.rsplit(":", 1)[1])
        started = time.monotonic()
        silent, halfway, whole = (socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3))
        halfway.sendall(b"GET / HTTP/1.1\r\nHo")
        for path in (b"/slow", b"/"):  # a request that comes whole is answered, and its connection kept
            whole.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            for _ in range(20):
                if answer.endswith(b"ok"):
                    break
                answer += whole.recv(1000)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
            time.sleep(0.1)
        # and a kept connection whose next request's head stops halfway is closed too (uvicorn's own timer stops at
        # its first byte)
        whole.sendall(b"GET / HTTP/1.1\r\nHo")
        for sock in (silent, halfway, whole):  # closed by the server, not by the 10 s timeout
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 6
        for sock in (silent, halfway, whole):
            sock.close()


def test_a_request_whose_body_comes_too_slowly_gets_a_408_and_a_whole_one_is_answered(server, monkeypatch):
    """A client that sent its body a byte at a time held the connection and ~300 KB of memory as long as it liked
    (100 of them: 100 connections still held after 40 s)."""
    from textgen import serve as serve_module

    monkeypatch.setattr(serve_module, "BODY_TIMEOUT_S", 1.0)
    started = time.monotonic()
    assert named_as(server, sent=5) == (408, {
        "error": "the request body did not arrive within 1 s of its head; send the whole request at once"})
    assert 1.0 <= time.monotonic() - started < 10
    status, text = call(server, "/v1/score", dict(text="abcdefg"))  # a body sent whole, in time, as before
    assert status == 200 and json.loads(text)["characters"] == 6


def test_a_client_that_leaves_while_sending_its_body_leaves_no_traceback(server):
    """Naming why a body could not be read read it again, and a client gone midway (a phone leaving the Wi-Fi) put
    an 80-line traceback in the log, every time."""
    host, port = server.removeprefix("http://").split(":")
    logged = logging.Handler()
    logged.emit = lambda record: records.append(record)
    records = []
    logging.getLogger("uvicorn.error").addHandler(logged)  # (uvicorn's loggers do not reach pytest's)
    try:
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=30) as leaving:
                leaving.sendall(f"POST /v1/score HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
                                'application/json\r\nContent-Length: 100\r\n\r\n{"text": "ab'.encode())
                time.sleep(0.3)
        time.sleep(1)
        assert call(server, "/v1/score", dict(text="abcdefg"))[0] == 200
    finally:
        logging.getLogger("uvicorn.error").removeHandler(logged)
    assert [record.getMessage() for record in records if record.levelno >= logging.ERROR] == []


def test_connections_not_accepted_are_told_in_one_line_a_minute(caplog):
    """Out of descriptors, asyncio logged a traceback for each connection it could not accept, up to 2,048 a try:
    22 MB of log in 10 s."""
    import errno
    import os

    from textgen import serve as serve_module

    clock = [1000.0]
    failure = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    shown = serve_module._CutShort()
    shown.clock = lambda: clock[0]

    def accept_failed():
        record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource\n"
                                   "socket: <asyncio.TransportSocket fd=6>", (), (OSError, failure, None))
        return shown.filter(record)

    with caplog.at_level(logging.INFO, logger="textgen"):
        assert [accept_failed() for _ in range(100)] == [False] * 100  # (asyncio's own record is never shown)
        clock[0] += 59
        accept_failed()
        told = [record.getMessage() for record in caplog.records]
        clock[0] += 2
        accept_failed()
    assert len(told) == 1 and told[0].startswith("cannot accept new connections (Too many open files; this "
                                                 "process may open ") and "ulimit -n" in told[0]
    assert len(caplog.records) == 2 and caplog.records[1].levelname == "ERROR"


def test_models_reads_a_runs_metadata_again_only_when_it_changed(trained_run, tmp_path, monkeypatch):
    """GET /v1/models (which the playground asks after every generation) parsed every run's metadata, history and
    vocabulary included, on each call."""
    import shutil

    from textgen import checkpoint
    from textgen.served_runs import Runs

    for name in ("main", "other"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    runs = Runs(tmp_path, "main", (1,))
    reads = []
    read_meta = checkpoint.read_meta
    monkeypatch.setattr(checkpoint, "read_meta", lambda path, kind: reads.append(path.name) or read_meta(path, kind))
    first = runs.describe_all(runs.paths())
    assert runs.describe_all(runs.paths()) == first and reads == ["other"]
    best = tmp_path / "other" / "best.json"
    meta = json.loads(best.read_text())
    meta["epoch"] = 7
    best.write_text(json.dumps(meta))  # a new checkpoint saved by a training
    assert runs.describe("other", tmp_path / "other")["epochs"] == 7 and reads == ["other", "other"]
    # A run deleted since is forgotten: the server held the metadata of every run it had ever listed.
    shutil.rmtree(tmp_path / "other")
    assert [model["name"] for model in runs.describe_all(runs.paths())] == ["main"] and runs._described == {}


def test_models_leaves_out_a_run_deleted_while_it_is_listed_and_keeps_its_paths_to_itself(trained_run, tmp_path):
    """A run deleted between listing the runs and reading its metadata made GET /v1/models a plain-text 500
    ('NoneType' object has no attribute 'state'); a damaged run's error named where the server keeps its runs."""
    import shutil

    from textgen.served_runs import Runs

    for name in ("main", "gone", "damaged"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    for kind in ("best", "last"):
        (tmp_path / "damaged" / f"{kind}.json").write_text("{")
    runs = Runs(tmp_path, "main", (1,))
    paths = runs.paths()
    shutil.rmtree(tmp_path / "gone")
    described = runs.describe_all(paths)
    assert sorted(model["name"] for model in described) == ["damaged", "main"]
    [damaged] = [model for model in described if model["name"] == "damaged"]
    assert damaged["error"].startswith("checkpoint metadata damaged/") and str(tmp_path) not in damaged["error"]


def test_a_default_run_deleted_is_missing_at_every_request(trained_run, tmp_path):
    """A default run whose folder is no run name ('a&b', the latest run) answered 404 once, then 400 'invalid run
    name' to every later request that named no run."""
    import shutil

    from textgen.served_runs import ApiError, Runs

    shutil.copytree(trained_run["run_dir"], tmp_path / "a&b")
    runs = Runs(tmp_path, None, (1,))
    assert runs.default == "a&b"
    shutil.rmtree(tmp_path / "a&b")
    for _ in range(2):
        with pytest.raises(ApiError, match="^the server's default run, 'a&b', is gone; name a run") as missing:
            runs.get(None)
        assert missing.value.status == 404


def test_models_describes_a_run_whose_best_metadata_is_damaged_from_the_checkpoint_it_would_serve(trained_run,
                                                                                                   tmp_path):
    import shutil

    from textgen.served_runs import Runs

    for name in ("good", "nobest"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    (tmp_path / "nobest" / "best.json").write_text("{")
    runs = Runs(tmp_path, "good", (1,))  # "nobest" is not loaded: described from its metadata
    described = runs.describe("nobest", tmp_path / "nobest")
    assert "error" not in described and described["epochs"] == 3 and described["corpus"] == "period.txt"
    assert runs.get("nobest").generator.meta.state.epoch == 3  # loading falls back to last.json the same way


def test_a_request_without_a_length_gets_the_servers_most_when_that_is_below_the_default(trained_run):
    """With --max-length 100, a request that left length out was refused: "length must be in [0, 100] on this
    server, got 500", and the OpenAPI document said "maximum": 100, "default": 500."""
    from textgen.serve import Limits, create_app

    with serving(create_app(trained_run["checkpoint_dir"], "period", Limits(max_length=100))) as base:
        status, text = call(base, "/v1/generate", dict(prime="abc", temperature=0))
        answer = json.loads(text)
        assert status == 200 and answer["options"]["length"] == 100
        assert answer["samples"][0]["text"] == ("abcdefg" * 20)[:103]
        document = json.loads(call(base, "/v1/openapi.json")[1])
        assert document["components"]["schemas"]["GenerateRequest"]["properties"]["length"] == dict(
            document["components"]["schemas"]["GenerateRequest"]["properties"]["length"], maximum=100, default=100)
        status, text = call(base, "/v1/generate", dict(length=500))  # asked for: refused, as before
        assert (status, json.loads(text)["error"]) == (400, "length must be in [0, 100] on this server, got 500")


def test_a_score_whose_client_left_while_it_waited_for_the_engine_is_not_computed(server, caplog, monkeypatch):
    """16 abandoned /v1/score requests of 20,000 characters were each computed in turn (the next request waited 7 s),
    and the log had no line for them."""
    generator = SERVED["app"].state.runs.get("period").generator
    scored, score = [], generator.score

    def slow_score(text):  # holds the engine while the others arrive and leave
        scored.append(text)
        time.sleep(0.5 if len(scored) == 1 else 0)
        return score(text)

    monkeypatch.setattr(generator, "score", slow_score)
    host, port = server.removeprefix("http://").split(":")

    def request(text: str) -> socket.socket:
        body = json.dumps(dict(text=text)).encode()
        connection = socket.create_connection((host, int(port)), timeout=30)
        connection.sendall(b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        return connection

    with caplog.at_level(logging.INFO, logger="textgen"):
        kept = request("abcdefg" * 100)
        deadline = time.monotonic() + 30
        while not scored:
            assert time.monotonic() < deadline, "the first score did not start"
            time.sleep(0.01)
        for _ in range(4):
            request("gfedcba" * 2800).close()
        assert b"200 OK" in kept.recv(4096)
        kept.close()
        gone = []
        while len(gone) < 4 and time.monotonic() < deadline:
            gone = [record for record in caplog.records if "went away" in record.getMessage()]
            time.sleep(0.01)
    assert [record.getMessage().split('" ', 1)[1] for record in gone] == [
        "went away while it waited for the engine; not computed"] * 4
    assert scored == ["abcdefg" * 100]
    assert call(server, "/v1/score", dict(text="abcdefg"))[0] == 200


def test_without_a_run_named_a_damaged_latest_run_leaves_the_default_to_the_next(trained_run, tmp_path, caplog):
    """The server refused to start when the latest run could not be loaded (a training killed mid-save), every other
    run good: under a service manager, for good."""
    import shutil

    from textgen.errors import TextgenError
    from textgen.served_runs import Runs

    for name in ("good", "newer"):
        shutil.copytree(trained_run["run_dir"], tmp_path / name)
    for kind in ("best", "last"):  # saved after good
        meta = json.loads((tmp_path / "newer" / f"{kind}.json").read_text())
        (tmp_path / "newer" / f"{kind}.json").write_text(json.dumps(dict(meta, saved_at="2099-01-01T00:00:00+00:00")))
    for weights in (tmp_path / "newer").glob("ckpt-*.weights.h5"):
        weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="textgen"):
        runs = Runs(tmp_path, None, (1,))
    assert runs.default == "good" and runs.get(None).name == "good"
    [warning] = [record.getMessage() for record in caplog.records]
    assert re.fullmatch(r"warning: the latest run, 'newer', cannot be served \(checkpoint file newer/ckpt-\S+ is "
                        r"(corrupted|cut short).*\); serving 'good' as the default \(name one with --run\)", warning)
    runs.stop()
    with pytest.raises(TextgenError, match="newer/ckpt-"):  # named: its own error, as before
        Runs(tmp_path, "newer", (1,))
    shutil.rmtree(tmp_path / "good")
    with pytest.raises(TextgenError, match="newer/ckpt-"):  # none to serve: the latest's error
        Runs(tmp_path, None, (1,))


def named_as(base: str, host_header: Optional[str] = None, sent: Optional[int] = None) -> tuple:
    """A score request to the server at base whose Host header is host_header (None: base's), of which only the first
    sent bytes of the body are sent (None: all): (status, answer)."""
    host, port = base.removeprefix("http://").split(":")
    body = b'{"text": "abcdefg"}'
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST /v1/score HTTP/1.1\r\nHost: {host_header or f'{host}:{port}'}\r\n"
                           "Connection: close\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:sent])
        answer = b""
        for _ in range(1000):
            if not (received := connection.recv(65536)):
                break
            answer += received
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(content)


def test_a_loopback_server_answers_only_requests_that_name_this_machine(trained_run):
    """A page of another site whose name its owner points at 127.0.0.1 (DNS rebinding) could call the API from the
    browser of anyone running the server: the request names that site in its Host header."""
    from textgen.serve import Limits, create_app

    app = create_app(trained_run["checkpoint_dir"], "period", Limits(), listening_on="127.0.0.1",
                     allow_hosts=("textgen.example.org",))  # a proxy in front that passes its name on (Caddy)
    with serving(app) as base:
        port = base.rsplit(":", 1)[1]

        def named(host_header: str) -> tuple:
            return named_as(base, host_header)

        for good in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.2",
                     f"app.localhost:{port}", "textgen.example.org", "TextGen.example.org:443"):
            status, answer = named(good)
            assert status == 200 and answer["run"] == "period", (good, answer)
        status, answer = named(f"attacker.example:{port}")
        assert (status, answer) == (400, {"error": "this server listens on the loopback interface and answers requests "
                                                   "for this machine (localhost, 127.0.0.1), not for "
                                                   "'attacker.example'; behind a proxy that passes that name on, "
                                                   "start it with --allow-host attacker.example"})
        assert named(f"10.0.0.5:{port}")[0] == 400


def test_a_server_on_the_network_answers_requests_that_name_it_by_address_or_host_name(trained_run):
    """With --host 0.0.0.0 (a classroom's network) no Host header was checked: a page of another site whose name its
    owner points at the server's address on that network could call the API from any visitor's browser."""
    from textgen.serve import Limits, create_app

    machine = socket.gethostname().lower()
    short = machine.split(".")[0]
    app = create_app(trained_run["checkpoint_dir"], "period", Limits(), listening_on="0.0.0.0", loopback=False,
                     allow_hosts=("textgen", ".lab.example.org"))  # a container's service name; a domain
    with serving(app) as base:
        port = base.rsplit(":", 1)[1]
        for good in (f"192.168.1.20:{port}", "10.0.0.5", f"[fe80::1]:{port}", f"localhost:{port}", machine, short,
                     f"{short}.local:{port}", "textgen:8000", "gpu-box.lab.example.org", "LAB.example.org."):
            status, answer = named_as(base, good)
            assert status == 200 and answer["run"] == "period", (good, answer)
        for bad in ("attacker.example", "evil-lab.example.org", "textgen.attacker.example"):
            assert named_as(base, f"{bad}:{port}")[0] == 400, bad
        status, answer = named_as(base, f"attacker.example:{port}")
        names = ", ".join(dict.fromkeys([machine, short, f"{short}.local"]))
        assert (status, answer) == (400, {"error": f"this server answers requests that name this machine (an IP "
                                                   f"address, localhost, {names}), not 'attacker.example', since a "
                                                   "web page of another site could otherwise call it from its "
                                                   "visitors' browsers; to reach it by that name, start it with "
                                                   "--allow-host attacker.example (or --allow-host '*' for any name)"})
    with serving(create_app(trained_run["checkpoint_dir"], "period", Limits(), listening_on="0.0.0.0", loopback=False,
                            allow_hosts=("*",))) as base:
        assert named_as(base, "attacker.example")[0] == 200  # the check turned off
