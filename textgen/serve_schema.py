"""The JSON of textgen serve's API: request bodies (validated), and responses and errors (described in the OpenAPI
document for clients, which may get fields added later; test_serve checks the server's real answers against them).

A request's sampling fields are SampleConfig's, by name; their ranges are SampleConfig's rules, shown in the
OpenAPI document only: a value outside them gets the command line's one-line message (400), not the validator's.
"""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from textgen.config import MAX_STOP_CHARS, MAX_STOPS, SampleConfig, rules

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _ranged(name: str, description: str, default=None):
    """A field of the sampling option name: its default (SampleConfig's unless given) and, in the OpenAPI document,
    its range on each number it may be (a temperature list's items too, and such a list is not empty)."""
    rule = rules(SampleConfig)[name]
    bounds = {}
    if rule.low is not None:
        bounds["exclusiveMinimum" if rule.low_open else "minimum"] = rule.low
    if rule.high is not None:
        bounds["exclusiveMaximum" if rule.high_open else "maximum"] = rule.high

    def place(schema: dict) -> None:
        for branch in schema.get("anyOf", [schema]):
            if branch.get("type") in ("integer", "number"):
                branch.update(bounds)
            elif branch.get("type") == "array":
                branch["items"].update(bounds)
                branch["minItems"] = 1

    if default is None:
        default = SampleConfig.__dataclass_fields__[name].default
    return Field(default, description=description, json_schema_extra=place)


def _stop_bounds(schema: dict) -> None:
    """The stop strings' limits (config.MAX_STOPS, MAX_STOP_CHARS) in the OpenAPI document, as SampleConfig checks
    them."""
    text = {"minLength": 1, "maxLength": MAX_STOP_CHARS}
    for branch in schema["anyOf"]:
        if branch.get("type") == "string":
            branch.update(text)
        elif branch.get("type") == "array":
            branch.update(minItems=1, maxItems=MAX_STOPS)
            branch["items"].update(text)


class SamplingOptions(BaseModel):
    """What a generate request asks for, and what its answer says it used."""

    run: Optional[str] = Field(None, description="Run name (default: the server's run)")
    prime: str = Field("", description="Text to start from; it begins each sample")
    length: int = _ranged("length", "Characters to generate (at most the server's max_length: GET /v1/models)")
    temperature: Union[float, list[float]] = _ranged("temperature", "One value, or one sample per value",
                                                     SampleConfig().temperature[0])
    top_k: Optional[int] = _ranged("top_k", "Draw only from the top_k most likely characters")
    top_p: Optional[float] = _ranged("top_p", "Draw from the smallest set of characters whose probability reaches "
                                              "top_p")
    min_p: Optional[float] = _ranged("min_p", "Drop characters less likely than min_p x the likeliest")
    max_repeat: Optional[int] = _ranged("max_repeat", "Never one character more than this many times in a row (0 or "
                                                      "null: no guard)")
    seed: Optional[int] = _ranged("seed", "The same seed gives the same text")
    stop: Union[None, str, list[str]] = Field(None, description="End a sample where it first produces this string "
                                              "(or, for a list, completes any of them); it is left out",
                                              json_schema_extra=_stop_bounds)
    num_samples: int = _ranged("num_samples", "Samples per temperature (at most the server's max_samples in all)")
    skip_unknown: bool = Field(False, description="Drop prime characters the model never saw")


class GenerateRequest(SamplingOptions):
    model_config = ConfigDict(extra="forbid", strict=True)
    stream: bool = Field(False, description="Stream the samples as Server-Sent Events, each piece with its sample's "
                                            "place in the samples list")


class GenerateOptions(SamplingOptions):
    """The request's options as used (stream aside)."""

    run: str = Field(description="The run that generated the samples")
    seed: Optional[int] = Field(description="The request's seed, or the one drawn for it (null for several "
                                            "temperatures without a seed: their samples are drawn independently)")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    run: Optional[str] = Field(None, description="Run name (default: the server's run)")
    text: str = Field(description="The text to score (at most the server's max_score_chars: GET /v1/models)")


class NextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    run: Optional[str] = Field(None, description="Run name (default: the server's run)")
    prime: str = Field("", description="The text so far (empty: the start of a text)")
    temperature: float = _ranged("temperature", "Divides the logits as in generate (1: the model's own "
                                                "distribution; 0: everything on the likeliest)", 1.0)
    skip_unknown: bool = Field(False, description="Drop prime characters the model never saw")
    top: Optional[int] = Field(None, description="Return only the top likeliest characters (null: every one)",
                               json_schema_extra=lambda schema: schema["anyOf"][0].update(minimum=1))


class ErrorBody(BaseModel):
    """Every error's body: one line naming the problem and what to do."""

    error: str


def errors(bad_request: str) -> dict:
    """The error answers of an endpoint, for the OpenAPI document; bad_request: what its 400 means."""
    return {status: {"model": ErrorBody, "description": description} for status, description in (
        (400, f"{bad_request}, or a run name that cannot be one (\"\", \"../x\")"), (404, "no such run"),
        (413, "a body over the size limit"), (415, "a body not sent as Content-Type: application/json"),
        (422, "malformed JSON or a field of the wrong type"), (500, "the run cannot be loaded, or the server failed"),
        (503, "the server is shutting down (a request it had to cut)"))}


class Sample(BaseModel):
    text: str = Field(description="The prime (as the model reads it) and the generated text")
    temperature: float
    index: int = Field(description="0-based number of this sample among those at its temperature")
    stopped: bool = Field(description="Whether a stop string ended it")


class GenerateResponse(BaseModel):
    options: GenerateOptions
    samples: list[Sample] = Field(description="Per temperature, num_samples samples")
    warnings: list[str] = Field(description="What the request asked for that cannot work as meant: a stop string "
                                            "with a character the model never saw, which can never end a sample; "
                                            "and the prime's characters that skip_unknown dropped")


class ScoreResponse(BaseModel):
    run: str
    bpc: float = Field(description="Bits per character")
    nats: float = Field(description="Cross-entropy per character, in nats")
    perplexity: float
    characters: int = Field(description="Characters scored (each but the first, read with a fresh state)")
    excluded: int = Field(description="Characters outside the model's vocabulary, removed before scoring")


class NextChar(BaseModel):
    character: str
    probability: float


class NextResponse(BaseModel):
    run: str
    temperature: float
    probabilities: list[NextChar] = Field(description="The characters after the prime, the likeliest first, before "
                                                      "any filter (all of the vocabulary, or the top ones)")
    warnings: list[str] = Field(description="The prime's characters that skip_unknown dropped")


class RunFacts(BaseModel):
    name: str
    corpus: str = Field(description="The corpus file's name")
    characters: int = Field(description="The corpus's length")
    epochs: int = Field(description="Epochs trained (validated)")
    step_in_epoch: int = Field(description="Steps trained into an epoch not finished (a time budget can stop a run on "
                                           "a large text before its first epoch ends)")
    val_bpc: Optional[float] = Field(description="The served checkpoint's validation bits per character")
    parameters: int
    layers: int
    units: int
    vocabulary: int


class RunError(BaseModel):
    name: str
    error: str = Field(description="Why the run cannot be served (its files inside the checkpoint directory)")


class ServerLimits(BaseModel):
    max_length: int
    max_samples: int
    max_prime_chars: int
    max_score_chars: int


class ModelsResponse(BaseModel):
    default: Optional[str] = Field(description="The run a request without one gets (null: none can be served)")
    models: list[Union[RunFacts, RunError]]
    limits: ServerLimits = Field(description="What one request may ask for on this server")


class Health(BaseModel):
    status: str


def with_limits(document: dict, limits) -> dict:
    """The OpenAPI document with this server's limits (config.Limits) on the fields they bound: the general rules
    allow far more (a length up to 1e7 where a server answers at most 2,000 by default)."""
    schemas = document["components"]["schemas"]
    generate = schemas["GenerateRequest"]["properties"]
    generate["length"]["maximum"] = limits.max_length
    generate["length"]["default"] = min(generate["length"]["default"], limits.max_length)  # as the server reads it
    generate["num_samples"]["maximum"] = limits.max_samples
    generate["prime"]["maxLength"] = limits.max_prime_chars
    schemas["NextRequest"]["properties"]["prime"]["maxLength"] = limits.max_prime_chars
    schemas["ScoreRequest"]["properties"]["text"]["maxLength"] = limits.max_score_chars
    return document


def integral_bounds(schema):
    """The OpenAPI document with each whole-number bound written as an integer: FastAPI's model of the document
    holds every bound as a float, so the integer fields said "minimum": 1.0."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in BOUNDS and isinstance(value, float) and value.is_integer():
                schema[key] = int(value)
            else:
                integral_bounds(value)
    elif isinstance(schema, list):
        for item in schema:
            integral_bounds(item)
    return schema
