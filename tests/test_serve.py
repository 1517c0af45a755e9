"""`superneurons serve` as a real process on 127.0.0.1, driven by the official openai client and
plain HTTP: answers equal the offline predictor's, requests are batched, bad requests are 4xx in
OpenAI's error shape, a burst past the queue gets 503s, SIGTERM drains."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import math
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from command import superneurons
from superneurons.bench.serve import ServerProcess, free_port
from superneurons.predictor import SuperNeuronPredictor

QUESTIONS = ["is there a red cube in the image ?", "is there a blue sphere ?", "how many ?"]


def _png(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _messages(question: str, url: str) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question},
    ]}]  # fmt: skip


class Server(ServerProcess):
    """A `superneurons serve` process, with plain HTTP requests to it."""

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        """(status, headers, parsed JSON or text) of one plain HTTP request."""
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                status, got, text = reply.status, reply.headers, reply.read().decode()
        except urllib.error.HTTPError as error:
            status, got, text = error.code, error.headers, error.read().decode()
        got = {key.lower(): value for key, value in got.items()}
        try:
            return status, got, json.loads(text)
        except ValueError:
            return status, got, text

    def get(self, path: str):
        status, _, body = self.request("GET", path)
        return status, body

    def post(self, path: str, document: object):
        status, _, body = self.request(
            "POST", path, json.dumps(document).encode(), {"Content-Type": "application/json"}
        )
        return status, body


@pytest.fixture(scope="module")
def served(tiny_run, tiny_llava_checkpoint):
    """A server of the tiny run's super neurons ("sn") and linear probe ("probe")."""
    out, _ = tiny_run
    server = Server([
        "--classifier", f"sn={out / 'classifier'}",
        "--classifier", f"probe={out / 'baselines' / 'linear_probe'}",
        "--model", str(tiny_llava_checkpoint), "--device", "cpu",
        "--max-batch-size", "8", "--max-wait-ms", "100", "--max-queue", "12",
        "--max-pixels", "1000000", "--max-request-pixels", "2000000",
    ])  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def offline(tiny_run, tiny_llava_checkpoint):
    """The offline predictors of the same classifiers."""
    out, _ = tiny_run
    sn = SuperNeuronPredictor.from_pretrained(
        out / "classifier", str(tiny_llava_checkpoint), device="cpu"
    )
    probe = SuperNeuronPredictor.from_pretrained(
        out / "baselines" / "linear_probe", sn.loaded, device="cpu"
    )
    return {"sn": sn, "probe": probe}


def _cases(n: int = 6) -> list[tuple[bytes, str]]:
    return [(_png(i), QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


def _expected(predictor, cases):
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data, _ in cases]
    return predictor.predict(images, [q for _, q in cases])


def test_models_and_health(served):
    status, models = served.get("/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["probe", "sn"]
    assert served.get("/health") == (200, {"status": "ok", "models": ["probe", "sn"]})


@pytest.mark.parametrize("name", ["sn", "probe"])
def test_the_openai_client_gets_the_offline_predictors_answers(served, offline, name):
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused")
    cases = _cases()
    for (data, question), expected in zip(cases, _expected(offline[name], cases), strict=True):
        reply = client.chat.completions.create(
            model=name, messages=_messages(question, _data_url(data)), max_tokens=1,
            temperature=0.7,
        )  # fmt: skip
        assert reply.choices[0].message.content == expected.label.capitalize()
        assert reply.choices[0].finish_reason == "stop"
        extension = reply.model_extra["superneurons"]
        assert extension["exit_layer"] == expected.exit_layer and not extension["fallback"]
        assert extension["score"] == pytest.approx(expected.score, abs=1e-5)
        assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens == 1


def test_concurrent_async_requests_are_batched_and_answered_alike(served, offline):
    cases = _cases(8)
    expected = _expected(offline["sn"], cases)
    before = _batch_metrics(served)

    async def ask_all():
        client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused")
        asks = [
            client.chat.completions.create(model="sn", messages=_messages(q, _data_url(d)))
            for d, q in cases
        ]
        return await asyncio.gather(*asks)

    replies = asyncio.run(ask_all())
    assert [r.choices[0].message.content for r in replies] == [
        e.label.capitalize() for e in expected
    ]
    after = _batch_metrics(served)
    batches = after["count"] - before["count"]
    alone = after["le1"] - before["le1"]
    assert batches - alone >= 1, (before, after)  # some forward answered more than one request
    assert after["sum"] - before["sum"] == len(cases)


def test_a_question_beyond_the_context_fails_alone_and_its_batch_runs_once(served, offline):
    cases = _cases(5)
    expected = _expected(offline["sn"], cases)
    before = _batch_metrics(served)

    async def ask_all():
        client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused")
        questions = [(q, _data_url(d)) for d, q in cases]
        questions.insert(2, ("is " * 5000 + "it red ?", _data_url(_png(0))))
        asks = [
            client.chat.completions.create(model="sn", messages=_messages(q, url))
            for q, url in questions
        ]
        return await asyncio.gather(*asks, return_exceptions=True)

    replies = asyncio.run(ask_all())
    overlong = replies.pop(2)
    assert isinstance(overlong, openai.BadRequestError), overlong
    assert "the question: the prompt is" in str(overlong) and "beyond the model's" in str(overlong)
    assert [r.choices[0].message.content for r in replies] == [
        e.label.capitalize() for e in expected
    ]
    # Every question went through one batch's forward, once: none was retried alone.
    assert _batch_metrics(served)["sum"] - before["sum"] == len(cases) + 1


def _batch_metrics(server: Server) -> dict[str, float]:
    _, text = server.get("/metrics")

    def value(pattern: str) -> float:
        return float(re.search(pattern + r" ([0-9.e+]+)", text).group(1))

    return {
        "count": value(r"superneurons_batch_size_count"),
        "sum": value(r"superneurons_batch_size_sum"),
        "le1": value(r'superneurons_batch_size_bucket\{le="1.0"\}'),
    }


def test_streaming_and_logprobs(served, offline):
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused")
    data, question = _cases(1)[0]
    (expected,) = _expected(offline["sn"], [(data, question)])
    stream = client.chat.completions.create(
        model="sn", messages=_messages(question, _data_url(data)), stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.label.capitalize()
    assert chunks[-1].choices[0].finish_reason == "stop"

    reply = client.chat.completions.create(
        model="sn", messages=_messages(question, _data_url(data)), logprobs=True, top_logprobs=2
    )
    token = reply.choices[0].logprobs.content[0]
    p_yes = expected.score  # the share of super neurons voting yes
    assert token.logprob == pytest.approx(math.log(p_yes if expected.label == "yes" else 1 - p_yes))
    assert sorted(t.token for t in token.top_logprobs) == ["No", "Yes"]


def test_classify_gives_labels_and_probabilities(served, offline):
    cases = _cases(3)
    expected = _expected(offline["sn"], cases)
    status, reply = served.post(
        "/classify", {"model": "sn", "input": [_messages(q, _data_url(d)) for d, q in cases]}
    )
    assert status == 200, reply
    assert [d["label"] for d in reply["data"]] == [e.label for e in expected]
    for entry, e in zip(reply["data"], expected, strict=True):
        assert entry["num_classes"] == 2
        assert entry["probs"] == pytest.approx([1 - e.score, e.score], abs=1e-6)
    status, one = served.post(
        "/classify", {"model": "sn", "messages": _messages(cases[0][1], _data_url(cases[0][0]))}
    )
    assert status == 200 and one["data"][0]["label"] == expected[0].label


def test_multiple_choice_through_the_extension_field(served, offline):
    data, _ = _cases(1)[0]
    choices = ["red", "blue", "green"]
    image = Image.open(io.BytesIO(data)).convert("RGB")
    (expected,) = offline["sn"].predict([image], ["what color ?"], [choices])
    status, reply = served.post("/v1/chat/completions", {
        "model": "sn", "messages": _messages("what color ?", _data_url(data)),
        "superneurons": {"choices": choices},
    })  # fmt: skip
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] == expected.label


def test_questions_about_one_image_reuse_its_prefix_and_answer_alike(served, offline):
    data = _png(42)
    cases = [(data, q) for q in QUESTIONS]
    expected = _expected(offline["sn"], cases)  # offline, without the caches

    def counts() -> dict[str, float]:
        _, text = served.get("/metrics")
        found = re.findall(r"superneurons_(\w+_cache_\w+) ([0-9.e+]+)", text)
        return {name: float(value) for name, value in found}

    before = counts()
    for (image, question), e in zip(cases, expected, strict=True):
        status, reply = served.post("/v1/chat/completions", {
            "model": "sn", "messages": _messages(question, _data_url(image))})  # fmt: skip
        assert status == 200 and reply["choices"][0]["message"]["content"] == e.label.capitalize()
        assert reply["superneurons"]["score"] == pytest.approx(e.score, abs=1e-6)
    after = counts()
    # The tiny template puts the image first: every question after the first ran only its own
    # tokens, attending to the image prefix's cached keys and values, and so never needed the
    # image's features again (the first computed them once).
    assert after["prefix_cache_hits"] - before["prefix_cache_hits"] == len(cases) - 1
    assert after["prefix_cache_misses"] - before["prefix_cache_misses"] == 1
    assert after["image_cache_misses"] - before["image_cache_misses"] == 1


def _big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (1200, 1000)).save(buffer, format="PNG")  # 1.2 M pixels, a few KB
    return buffer.getvalue()


def _bmp() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="BMP")
    return buffer.getvalue()


RED = "is it red ?"
GOOD = {"model": "sn", "messages": _messages("is there a cube ?", _data_url(_png(0)))}
BAD_REQUESTS = [
    ("unknown model", {**GOOD, "model": "gpt-4o"}, 404, "does not exist"),
    ("no image", {"model": "sn", "messages": [{"role": "user", "content": "is it red ?"}]}, 400,
     "no image"),
    ("two images", {"model": "sn", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _data_url(_png(0))}},
        {"type": "image_url", "image_url": {"url": _data_url(_png(1))}},
        {"type": "text", "text": "is it red ?"}]}]}, 400, "2 images"),
    ("bad base64", {"model": "sn", "messages": _messages(RED, "data:image/png;base64,@@@")},
     400, "base64"),
    ("not an image", {"model": "sn", "messages": _messages(
        "is it red ?", _data_url(b"these are not pixels"))}, 400, "cannot read the image"),
    ("empty question", {"model": "sn", "messages": _messages("   ", _data_url(_png(0)))}, 400,
     "empty"),
    ("http url", {"model": "sn", "messages": _messages("is it red ?", "https://x.org/a.png")}, 400,
     "fetches nothing"),
    ("file url", {"model": "sn", "messages": _messages("is it red ?", "file:///etc/passwd")}, 400,
     "--allow-files"),
    ("too many pixels", {"model": "sn", "messages": _messages(RED, _data_url(_big_png()))},
     400, "pixels"),
    ("not png, jpeg or webp", {"model": "sn", "messages": _messages(RED, _data_url(_bmp()))},
     400, "no PNG, JPEG, WEBP image"),
    ("n = 2", {**GOOD, "n": 2}, 400, "n = 1"),
    ("system message", {**GOOD, "messages": [{"role": "system", "content": "be brief"},
                                             *GOOD["messages"]]}, 400, "one message"),
    ("not an object", [1, 2], 400, "JSON object"),
    ("question too long", {"model": "sn", "messages": _messages(
        "is " * 5000 + "it red ?", _data_url(_png(0)))}, 400, "beyond the model's context"),
]  # fmt: skip


@pytest.mark.parametrize(
    "body, status, message", [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_a_bad_request_is_a_4xx_in_openais_error_shape(served, body, status, message):
    got, reply = served.post("/v1/chat/completions", body)
    assert got == status, reply
    assert set(reply) == {"error"} and message in reply["error"]["message"], reply
    assert served.post("/v1/chat/completions", GOOD)[0] == 200  # and it keeps answering


@pytest.mark.parametrize(
    "body, headers, status, message",
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        (json.dumps(GOOD).encode(), {"Content-Type": "text/plain"}, 415, "application/json"),
        (
            b"[" * 200_000 + b"]" * 200_000,
            {"Content-Type": "application/json"},
            400,
            "nested too deeply",
        ),
        (
            json.dumps(GOOD).encode()[:-1] + b', "max_tokens": 1' + b"0" * 400 + b"}",
            {"Content-Type": "application/json"},
            400,
            "'max_tokens' must be a finite number",
        ),
    ],
    ids=["invalid JSON", "wrong content type", "nested too deeply", "an integer beyond floats"],
)
def test_bodies_that_are_not_json_requests_are_refused(served, body, headers, status, message):
    got, _, reply = served.request("POST", "/v1/chat/completions", body, headers)
    assert got == status and message in reply["error"]["message"], reply
    assert served.post("/v1/chat/completions", GOOD)[0] == 200


def test_a_classify_request_too_large_for_the_queue_or_in_pixels_is_a_413(served):
    many = [_messages(RED, _data_url(_png(0)))] * 13  # the server queues 12
    status, reply = served.post("/classify", {"model": "sn", "input": many})
    assert status == 413 and "--max-queue" in reply["error"]["message"], reply
    buffer = io.BytesIO()
    Image.new("1", (1000, 800)).save(buffer, format="PNG")  # 0.8 M pixels: three pass 2 M
    large = [_messages(RED, _data_url(buffer.getvalue()))] * 3
    status, reply = served.post("/classify", {"model": "sn", "input": large})
    assert status == 413 and "--max-request-pixels" in reply["error"]["message"], reply
    status, reply = served.post("/classify", {"model": "sn", "input": large[:2]})
    assert status == 200 and len(reply["data"]) == 2, reply


def test_a_model_is_retrieved_by_name_with_the_openai_client(served):
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused")
    assert client.models.retrieve("sn").id == "sn"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_file_url_with_a_nul_is_a_400(tmp_path):
    from superneurons.serve.protocol import Limits, RequestError, image_from_url

    with pytest.raises(RequestError, match="NUL") as refused:
        image_from_url(f"file://{tmp_path}/a%00b.png", Limits(100, tmp_path), "messages")
    assert refused.value.status == 400


def test_a_probes_probability_of_a_score_far_from_zero_does_not_overflow(offline):
    from superneurons.serve.engine import yes_probability

    assert yes_probability(offline["probe"], -1000.0) == 0.0
    assert yes_probability(offline["probe"], 1000.0) == 1.0
    assert yes_probability(offline["probe"], 0.0) == 0.5


def test_a_body_over_the_limit_is_refused_before_it_is_read(served):
    """A 21 MiB body announced (the limit is 20 MiB): refused with 413 on its headers alone."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(21 * 2**20))
    connection.endheaders()
    reply = connection.getresponse()
    assert reply.status == 413 and "over the limit" in json.loads(reply.read())["error"]["message"]
    connection.close()


def test_an_unknown_path_is_a_404_in_the_error_shape(served):
    status, reply = served.get("/v1/embeddings")
    assert status == 404 and "error" in reply


def test_a_burst_past_the_queue_gets_503s_and_no_crash(served):
    results = []

    def ask():
        status, headers, reply = served.request(
            "POST", "/v1/chat/completions", json.dumps(GOOD).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        results.append((status, headers.get("retry-after"), reply))

    threads = [threading.Thread(target=ask) for _ in range(48)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    assert all(retry == "1" for status, retry, _ in results if status == 503)
    assert served.post("/v1/chat/completions", GOOD)[0] == 200
    _, text = served.get("/metrics")
    assert re.search(r'superneurons_errors_total\{kind="queue_full"\} [1-9]', text)


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(tiny_run, tiny_llava_checkpoint):
    out, _ = tiny_run
    server = Server([
        "--classifier", str(out / "classifier"), "--model", str(tiny_llava_checkpoint),
        "--device", "cpu", "--max-wait-ms", "1500",
    ])  # fmt: skip
    name = str(out / "classifier")
    replies = []
    body = {**GOOD, "model": name}
    thread = threading.Thread(
        target=lambda: replies.append(server.post("/v1/chat/completions", body))
    )
    thread.start()
    time.sleep(0.5)  # the request waits in its batch (max-wait 1.5 s) when SIGTERM comes
    assert server.stop() == 0
    thread.join()
    assert replies and replies[0][0] == 200, replies


def _model_process(server: ServerProcess) -> int:
    """The PID of the server's model process (its one spawned child)."""
    children = (Path("/proc") / str(server.process.pid) / "task").glob("*/children")
    pids = [int(pid) for file in children for pid in file.read_text().split()]
    spawned = [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(spawned) == 1, pids
    return spawned[0]


def test_the_model_process_ignores_sigterm_and_its_death_is_a_503(tiny_run, tiny_llava_checkpoint):
    out, _ = tiny_run
    server = Server([
        "--classifier", f"sn={out / 'classifier'}", "--model", str(tiny_llava_checkpoint),
        "--device", "cpu", "--max-wait-ms", "1000",
    ])  # fmt: skip
    try:
        model = _model_process(server)
        blocks = set(Path("/dev/shm").glob("psm_*"))
        replies = []
        thread = threading.Thread(
            target=lambda: replies.append(server.post("/v1/chat/completions", GOOD))
        )
        thread.start()
        time.sleep(0.3)  # in its batch (max-wait 1 s): a stop signal to every process of the
        os.kill(model, signal.SIGTERM)  # server (as a service manager sends) leaves it be
        thread.join()
        assert replies[0][0] == 200, replies
        os.kill(model, signal.SIGKILL)
        deadline = time.time() + 30
        while server.get("/health")[0] == 200 and time.time() < deadline:
            time.sleep(0.05)
        assert server.get("/health") == (503, {"status": "the model process exited"})
        status, reply = server.post("/v1/chat/completions", GOOD)
        assert status == 503 and reply["error"]["code"] == "model_process_exited", reply
        assert "restart the server" in reply["error"]["message"]
    finally:
        assert server.stop() == 0
    # The pixels' block is unlinked by the server itself, not left to multiprocessing's
    # resource tracker (which removes it too at exit, but warns of a leak).
    assert set(Path("/dev/shm").glob("psm_*")) <= blocks
    assert "leaked shared_memory" not in server.process.stderr.read().decode()


def test_a_hung_model_process_is_stopped_at_the_batch_timeout_and_sigterm_exits_0(
    tiny_run, tiny_llava_checkpoint
):
    out, _ = tiny_run
    server = Server([
        "--classifier", f"sn={out / 'classifier'}", "--model", str(tiny_llava_checkpoint),
        "--device", "cpu", "--request-timeout", "1", "--batch-timeout", "4",
    ])  # fmt: skip
    try:
        model = _model_process(server)
        os.kill(model, signal.SIGSTOP)  # hung, as on a deadlocked device
        status, reply = server.post("/v1/chat/completions", GOOD)
        assert status == 504, reply
        deadline = time.time() + 30
        while server.get("/health")[0] == 200 and time.time() < deadline:
            time.sleep(0.1)
        assert server.get("/health") == (503, {"status": "the model process exited"})
        status, reply = server.post("/v1/chat/completions", GOOD)
        assert status == 503 and "within 4 s (--batch-timeout)" in reply["error"]["message"]
        assert not Path(f"/proc/{model}").exists()  # killed and reaped
    finally:
        assert server.stop() == 0


def test_sigterm_while_the_model_process_hangs_exits_0_at_the_batch_timeout(
    tiny_run, tiny_llava_checkpoint
):
    out, _ = tiny_run
    server = Server([
        "--classifier", f"sn={out / 'classifier'}", "--model", str(tiny_llava_checkpoint),
        "--device", "cpu", "--request-timeout", "30", "--batch-timeout", "3",
    ])  # fmt: skip
    os.kill(_model_process(server), signal.SIGSTOP)
    replies = []
    thread = threading.Thread(
        target=lambda: replies.append(server.post("/v1/chat/completions", GOOD))
    )
    thread.start()
    time.sleep(0.5)  # its batch is in the hung process when SIGTERM comes
    started = time.time()
    assert server.stop() == 0  # was: waited for the model thread forever, killed after 60 s
    assert time.time() - started < 20
    thread.join()
    assert replies[0][0] == 503 and "--batch-timeout" in replies[0][1]["error"]["message"]


def test_the_cascade_and_the_full_model_served_beside_the_classifier(
    tiny_run, tiny_llava_checkpoint, offline
):
    out, _ = tiny_run
    server = Server([
        "--classifier", f"sn={out / 'classifier'}", "--full-model", "full",
        "--model", str(tiny_llava_checkpoint), "--device", "cpu", "--fallback-margin", "0.5",
    ])  # fmt: skip
    try:
        assert [m["id"] for m in server.get("/v1/models")[1]["data"]] == ["full", "sn"]
        cases = _cases(4)
        images = [Image.open(io.BytesIO(d)).convert("RGB") for d, _ in cases]
        questions = [q for _, q in cases]
        cascade = SuperNeuronPredictor.from_pretrained(
            out / "classifier", offline["sn"].loaded, fallback_margin=0.5
        )
        expected = cascade.predict(images, questions)
        full = offline["sn"].full_model_answers(images, questions)
        for (data, question), e, f in zip(cases, expected, full, strict=True):
            status, reply = server.post("/v1/chat/completions", {
                "model": "sn", "messages": _messages(question, _data_url(data))})  # fmt: skip
            assert status == 200, reply
            assert reply["choices"][0]["message"]["content"] == e.label.capitalize()
            assert reply["superneurons"]["fallback"] == e.fallback
            status, reply = server.post("/v1/chat/completions", {
                "model": "full", "messages": _messages(question, _data_url(data))})  # fmt: skip
            assert status == 200, reply
            if f is not None:  # the tiny model's answer parses as yes or no
                assert reply["choices"][0]["message"]["content"] == f.capitalize()
        _, text = server.get("/metrics")
        fallbacks = float(re.search(r"superneurons_fallbacks_total ([0-9.]+)", text).group(1))
        assert fallbacks == sum(e.fallback for e in expected)
    finally:
        assert server.stop() == 0


def test_a_request_past_its_timeout_is_a_504_and_the_server_goes_on(
    tiny_run, tiny_llava_checkpoint
):
    out, _ = tiny_run
    server = Server([
        "--classifier", f"sn={out / 'classifier'}", "--model", str(tiny_llava_checkpoint),
        "--device", "cpu", "--max-wait-ms", "300", "--request-timeout", "0.05",
    ])  # fmt: skip
    try:
        status, reply = server.post("/v1/chat/completions", GOOD)  # waits 300 ms for company
        assert status == 504 and "no answer within 0.05 s" in reply["error"]["message"]
        _, text = server.get("/metrics")
        assert re.search(r'superneurons_errors_total\{kind="timeout"\} 1', text)
        assert server.get("/health")[0] == 200
    finally:
        assert server.stop() == 0


def test_a_classifier_of_another_model_is_refused_at_start(tiny_run):
    out, _ = tiny_run
    done = superneurons("serve", "--classifier", out / "classifier", "--model", "embedded",
                        "--port", str(free_port()), "--device", "cpu")  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fingerprint" in errors[0] and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "value, message",
    [("=x", "give DIR or NAME=DIR"), ("sn=/nonexistent", "sn=/nonexistent: no such directory")],
)
def test_a_bad_classifier_option_is_one_error_line(value, message):
    done = superneurons("serve", "--classifier", value, "--port", str(free_port()))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr


def test_a_port_in_use_is_one_error_before_the_model_loads(tiny_run):
    out, _ = tiny_run
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = superneurons("serve", "--classifier", out / "classifier", "--port", str(port))
    assert done.returncode == 2 and "cannot listen" in done.stderr, done.stderr


def test_a_block_beyond_the_free_shared_memory_is_refused_and_leaves_nothing():
    import shutil

    from superneurons.serve.worker import _new_block

    before = set(os.listdir("/dev/shm"))
    with pytest.raises(OSError):
        _new_block(shutil.disk_usage("/dev/shm").free + 2**30)  # an error, not a later SIGBUS
    assert set(os.listdir("/dev/shm")) == before


def test_a_batchs_images_cross_to_the_model_process_exactly_through_a_reused_block():
    from superneurons.serve.protocol import Question
    from superneurons.serve.worker import _pack, _unpack

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((5, 7), (64, 48), (1, 1), (600, 500))]  # fmt: skip
    images.append(images[1].convert("L"))  # converted to RGB on the way
    questions = [Question("sn", image, f"q{i}", ["a", "b"] if i else None, "c" if i else None)
                 for i, image in enumerate(images)]  # fmt: skip
    small, _ = _pack(questions[:1], None)
    block, packed = _pack(questions, small)  # 1 MiB is too small for 600x500: a new block
    assert block.name != small.name and not Path(f"/dev/shm/{small.name}").exists()
    try:
        assert _pack(questions[:2], block)[0] is block  # it fits: the block is reused
        block, packed = _pack(questions, block)
        back = _unpack(block, packed)
    finally:
        block.close()
        block.unlink()
    for sent, got in zip(questions, back, strict=True):
        assert got.image.mode == "RGB" and got.image.size == sent.image.size
        assert got.image.tobytes() == sent.image.convert("RGB").tobytes()
        assert (got.model, got.question, got.choices, got.context) == (
            sent.model, sent.question, sent.choices, sent.context,
        )  # fmt: skip
