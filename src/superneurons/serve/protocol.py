"""The wire formats: OpenAI Chat Completions and vLLM's ``/classify`` in, replies out.

Every refusal is a :class:`RequestError`: an HTTP status and a message in OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``). Requests are checked completely (the image
decoded, the question present) before they are queued, so a batch never fails for one bad
request.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from superneurons.data.images import open_rgb
from superneurons.errors import DataError

# The image formats a data: URL may carry.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
INLINE_FORMATS = ("PNG", "JPEG", "WEBP")  # what a data: URL's bytes may be, whatever it says
_DATA_URL = re.compile(
    r"data:(?P<type>[\w/+.-]+)?(?P<params>(;[\w=.-]+)*);base64,(?P<data>.*)", re.S
)


class RequestError(Exception):
    """A request refused with ``status``; ``param`` names the offending field."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind,
        )  # fmt: skip

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    """What the server accepts: image pixels (of one image, of a request's together), questions
    in one request, and the folder ``file://`` images may come from."""

    max_pixels: int
    allow_files: Path | None = None
    max_request_pixels: int | None = None
    max_questions: int | None = None  # in one /classify request (the server's queue)


class _PixelBudget:
    """The pixels a request's images may still hold, taken as each is read (from its header,
    before it is decoded)."""

    def __init__(self, limits: Limits) -> None:
        self.total, self.left = limits.max_request_pixels, limits.max_request_pixels

    def take(self, data: bytes, formats: tuple[str, ...] | None, param: str) -> None:
        if self.left is None:
            return
        try:
            with Image.open(io.BytesIO(data), formats=formats) as image:
                width, height = image.size
        except Exception:
            return  # not an image: open_rgb says what is wrong
        self.left -= width * height
        if self.left < 0:
            raise RequestError(
                413,
                f"the request's images hold over {self.total:,} pixels in all "
                "(--max-request-pixels): send fewer in one request",
                param,
            )


@dataclass
class Question:
    """One question a request asks: of one image, for one classifier (``model``)."""

    model: str
    image: Image.Image
    question: str
    choices: list[str] | None = None
    context: str | None = None


@dataclass(frozen=True)
class ChatOptions:
    """The Chat Completions fields that shape the reply (sampling fields shape nothing)."""

    stream: bool = False
    logprobs: bool = False
    top_logprobs: int = 0


def check_model(body: dict, models: Collection[str]) -> str:
    """The requested classifier's name; unknown ones are a 404 naming those served."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' is required: the name of a served classifier", "model")
    if model not in models:
        raise RequestError(
            404,
            f"the model {model!r} does not exist; served: {sorted(models)}",
            "model",
            "model_not_found",
        )
    return model


def image_from_url(
    url: object, limits: Limits, param: str, budget: _PixelBudget | None = None
) -> Image.Image:
    """The image of an ``image_url``: a ``data:`` URL with base64 PNG, JPEG or WebP, or a
    ``file://`` URL under ``limits.allow_files``; the server fetches nothing over the network."""
    if not isinstance(url, str) or not url:
        raise RequestError(400, "the image_url part needs a 'url'", param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise RequestError(
            400,
            "the server fetches nothing: send the image inline as a data: URL "
            "(data:image/png;base64,...)",
            param,
        )
    if scheme == "file":
        return _file_image(url, limits, param, budget)
    if scheme != "data":
        raise RequestError(
            400, "the image URL must be a data: URL (base64 PNG, JPEG or WebP)", param
        )
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise RequestError(400, "the data: URL must be base64: data:image/png;base64,...", param)
    if (match["type"] or "").lower() not in IMAGE_TYPES:
        raise RequestError(
            400, f"the data: URL's type {match['type']!r} is not one of {IMAGE_TYPES}", param
        )
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "the data: URL's base64 is malformed", param) from None
    return _decoded(data, limits, param, INLINE_FORMATS, budget)


def _file_image(url: str, limits: Limits, param: str, budget: _PixelBudget | None) -> Image.Image:
    if limits.allow_files is None:
        raise RequestError(
            400, "file:// images are refused: the server was started without --allow-files", param
        )
    name = unquote(urlparse(url).path)
    if "\0" in name:
        raise RequestError(400, "the file:// URL holds a NUL character", param)
    path = Path(name).resolve()
    if not path.is_relative_to(limits.allow_files.resolve()):
        raise RequestError(400, f"file:// images must lie under {limits.allow_files}", param)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RequestError(400, f"{path}: cannot read ({error.strerror})", param) from None
    return _decoded(data, limits, param, None, budget)


def _decoded(
    data: bytes,
    limits: Limits,
    param: str,
    formats: tuple[str, ...] | None,
    budget: _PixelBudget | None,
) -> Image.Image:
    if budget is not None:
        budget.take(data, formats, param)
    try:
        return open_rgb(data, "the image", limits.max_pixels, formats)
    except DataError as error:
        raise RequestError(
            400, str(error).replace("(raise it with --max-pixels)", ""), param
        ) from None


def _messages_question(
    messages: object, model: str, limits: Limits, param: str, budget: _PixelBudget
) -> Question:
    """The one question of a conversation: one user message holding one image and one text."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of messages", param)
    if any(not isinstance(m, dict) for m in messages):
        raise RequestError(400, "every message must be an object with 'role' and 'content'", param)
    roles = [m.get("role") for m in messages]
    if roles != ["user"]:
        raise RequestError(
            400,
            f"exactly one message, from the user, is answered (got roles {roles}): the "
            "classifier reads the prompt it was fitted with",
            param,
        )
    content = messages[0].get("content")
    if isinstance(content, str):
        raise RequestError(
            400, "no image: the content needs an image_url part", f"{param}[0].content"
        )
    if not isinstance(content, list):
        raise RequestError(400, "the content must be a list of parts", f"{param}[0].content")
    images = [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
    texts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
    if len(images) + len(texts) != len(content):
        raise RequestError(400, "content parts must be image_url or text", f"{param}[0].content")
    if len(images) != 1:
        what = "no image" if not images else f"{len(images)} images"
        raise RequestError(400, f"{what}: give exactly one image_url part", f"{param}[0].content")
    if len(texts) != 1:
        raise RequestError(400, "give exactly one text part: the question", f"{param}[0].content")
    question = texts[0].get("text")
    if not isinstance(question, str) or not question.strip():
        raise RequestError(400, "the question (the text part) is empty", f"{param}[0].content")
    image_url = images[0].get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    image = image_from_url(url, limits, f"{param}[0].content", budget)
    return Question(model, image, question.strip())


def _extension(body: dict, question: Question) -> Question:
    """The ``superneurons`` extension object: ``choices`` (multiple choice) and ``context``."""
    extension = body.get("superneurons") or {}
    if not isinstance(extension, dict):
        raise RequestError(400, "'superneurons' must be an object", "superneurons")
    choices = extension.get("choices")
    if choices is not None and (
        not isinstance(choices, list)
        or not 2 <= len(choices) <= 26
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise RequestError(400, "choices must be 2 to 26 non-empty strings", "superneurons.choices")
    context = extension.get("context")
    if context is not None and not isinstance(context, str):
        raise RequestError(400, "context must be a string", "superneurons.context")
    question.choices, question.context = choices, context or None
    return question


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def parse_chat(
    body: object, models: Collection[str], limits: Limits
) -> tuple[Question, ChatOptions]:
    """A Chat Completions request: its question and the reply's options."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    model = check_model(body, models)
    n = body.get("n", 1)
    if n not in (1, None):
        raise RequestError(
            400, "only n = 1 is supported: the answer is the vote, not a sample", "n"
        )
    for name in ("max_tokens", "max_completion_tokens", "temperature", "top_p"):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value)
        ):
            raise RequestError(400, f"'{name}' must be a finite number", name)
    stream, logprobs = body.get("stream", False), body.get("logprobs", False)
    for name, value in (("stream", stream), ("logprobs", logprobs)):
        if value is not None and not isinstance(value, bool):
            raise RequestError(400, f"'{name}' must be true or false", name)
    top = body.get("top_logprobs") or 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
        raise RequestError(400, "'top_logprobs' must be an integer from 0 to 20", "top_logprobs")
    question = _messages_question(
        body.get("messages"), model, limits, "messages", _PixelBudget(limits)
    )
    return _extension(body, question), ChatOptions(bool(stream), bool(logprobs), top)


def parse_classify(body: object, models: Collection[str], limits: Limits) -> list[Question]:
    """A ``/classify`` request: ``messages`` (one conversation) or ``input`` (a list of them)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    model = check_model(body, models)
    budget = _PixelBudget(limits)  # all the request's images together
    if ("messages" in body) == ("input" in body):
        raise RequestError(400, "give 'messages' (one conversation) or 'input' (a list of them)")
    if "messages" in body:
        asked = _messages_question(body["messages"], model, limits, "messages", budget)
        return [_extension(body, asked)]
    conversations = body["input"]
    if not isinstance(conversations, list) or not conversations:
        raise RequestError(400, "'input' must be a non-empty list of message lists", "input")
    if limits.max_questions is not None and len(conversations) > limits.max_questions:
        raise RequestError(
            413,
            f"'input' holds {len(conversations)} conversations; the server queues at most "
            f"{limits.max_questions} (--max-queue): send them in smaller requests",
            "input",
        )
    return [
        _extension(body, _messages_question(c, model, limits, f"input[{i}]", budget))
        for i, c in enumerate(conversations)
    ]


# -- replies ------------------------------------------------------------------------------------


@dataclass
class Answer:
    """What the engine answers one question: the label, the probability of each class (no, yes;
    or one per choice), the exit layer, whether the full model answered, the prompt's tokens."""

    label: str  # "yes", "no" or a choice's letter
    classes: list[str]
    probs: list[float]
    score: float
    exit_layer: int
    fallback: bool
    prompt_tokens: int

    @property
    def text(self) -> str:
        """The assistant's reply: "Yes", "No" or the choice's letter."""
        return self.label.capitalize() if self.label in ("yes", "no") else self.label

    def extension(self) -> dict:
        return {
            "score": round(self.score, 6),
            "exit_layer": self.exit_layer,
            "fallback": self.fallback,
        }


def _logprob(p: float) -> float:
    return math.log(max(p, 1e-12))


def _logprobs(answer: Answer, top: int) -> dict:
    """OpenAI's ``logprobs`` of the one token answered, from the class probabilities."""

    def entry(text: str, p: float) -> dict:
        return {"token": text, "logprob": _logprob(p), "bytes": list(text.encode())}

    names = [c.capitalize() if c in ("yes", "no") else c for c in answer.classes]
    ranked = sorted(zip(names, answer.probs, strict=True), key=lambda pair: -pair[1])[:top]
    known = answer.label in answer.classes  # the full model's unparseable answer is not
    chosen = answer.probs[answer.classes.index(answer.label)] if known else 1 / len(answer.probs)
    return {
        "content": [
            {**entry(answer.text, chosen), "top_logprobs": [entry(*pair) for pair in ranked]}
        ],
        "refusal": None,
    }


def _usage(answer: Answer) -> dict:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": 1,
        "total_tokens": answer.prompt_tokens + 1,
    }


def chat_completion(
    answer: Answer, model: str, options: ChatOptions, ident: str, created: int
) -> dict:
    """The Chat Completions reply."""
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "logprobs": _logprobs(answer, options.top_logprobs) if options.logprobs else None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(answer),
        "superneurons": answer.extension(),
    }


def chat_chunks(
    answer: Answer, model: str, options: ChatOptions, ident: str, created: int
) -> list[dict]:
    """The streamed reply's chunks: the role and the answer, then ``finish_reason`` and usage."""

    def chunk(delta: dict, finish: str | None, **extra) -> dict:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": extra.pop("logprobs", None),
                         "finish_reason": finish}],
            **extra,
        }  # fmt: skip

    logprobs = _logprobs(answer, options.top_logprobs) if options.logprobs else None
    return [
        chunk({"role": "assistant", "content": answer.text}, None, logprobs=logprobs),
        chunk({}, "stop", usage=_usage(answer), superneurons=answer.extension()),
    ]


def classify_reply(answers: list[Answer], model: str, ident: str, created: int) -> dict:
    """vLLM's ``/classify`` reply: per input its label and class probabilities."""
    tokens = sum(a.prompt_tokens for a in answers)
    return {
        "id": ident,
        "object": "list",
        "created": created,
        "model": model,
        "data": [
            {
                "index": i,
                "label": a.label,
                "probs": a.probs,
                "num_classes": len(a.probs),
                "superneurons": a.extension(),
            }
            for i, a in enumerate(answers)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }
