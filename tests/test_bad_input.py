"""Bad input stops before any work, with one line naming what and where, and touches nothing.

The corpus runs the real command line in a subprocess for every case and checks: exit status 2,
exactly one ``error:`` line holding the expected words, no traceback, and every file under the
test's directory and the shared run (the inputs) byte-identical afterwards — so nothing was
written, half-written or deleted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from command import superneurons
from superneurons.data.probing import balanced_sample
from superneurons.data.records import DataError, Record, load_jsonl


def write_questions(path: Path, rows: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    """A JSON-lines file of ``rows``; ``raw_lines`` replaces line i (0-based) by raw bytes."""
    lines = [json.dumps(r).encode() for r in rows]
    for i, raw in (raw_lines or {}).items():
        lines[i] = raw
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def good_rows(n: int = 4, image: str = "good.png") -> list[dict]:
    return [
        {"id": f"q{k}", "image": image, "question": f"Is it {k}?", "label": ("yes", "no")[k % 2]}
        for k in range(n)
    ]


def snapshot(*roots: Path) -> dict[str, object]:
    """Every file's hash and every folder under ``roots``: equal snapshots mean untouched."""
    seen: dict[str, object] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[str(path)] = "dir"
    return seen


@dataclass
class World:
    tmp: Path
    model: Path
    run: Path
    image: Path

    def jsonl(self, rows: list, raw_lines: dict[int, bytes] | None = None) -> Path:
        return write_questions(self.tmp / "q.jsonl", rows, raw_lines)

    def extract(self, *extra: str) -> list[str]:
        base = ["extract", "--out", self.tmp / "store", "--jsonl", self.tmp / "q.jsonl"]
        return [*base, "--model", self.model, "--n", "4", "--max-new-tokens", "2", *extra]

    def copy(self, relative: str) -> Path:
        target = self.tmp / Path(relative).name
        shutil.copytree(self.run / relative, target)
        shutil.rmtree(target / ".superneurons", ignore_errors=True)
        return target


@dataclass
class Case:
    """``build(world)`` writes the bad input and returns the command's arguments."""

    build: Callable[[World], list]
    expect: tuple[str, ...]
    cwd: bool = False  # run in the test's directory
    env: dict = field(default_factory=dict)


def _user_dir(world: World, name: str = "mine") -> Path:
    """A folder of the user's, holding their work."""
    folder = world.tmp / name
    folder.mkdir()
    (folder / "thesis.tex").write_text("six months of work\n")
    return folder


def _probe(world: World) -> Path:
    return world.run / "activations" / "probe"


def _discover(world: World, *extra) -> list:
    return ["discover", "--store", _probe(world), "--out", world.tmp / "clf", *extra]


def _evaluate(world: World, classifier: Path, store: Path | None = None) -> list:
    store = store or world.run / "activations" / "val"
    return ["evaluate", "--classifier", classifier, "--store", store]


def _predict(world: World, *extra, image=None) -> list:
    image = image or world.image
    return ["predict", "--classifier", world.run / "classifier", image, "Is it red?", *extra]


def _tamper_tensors(world: World, change: Callable[[dict], None]) -> Path:
    from safetensors.numpy import load_file, save_file

    classifier = world.copy("classifier")
    (file,) = classifier.glob("neurons*.safetensors")
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))
    return classifier


def _tamper_json(world: World, relative: str, change: Callable[[dict], object]) -> Path:
    folder = world.copy(str(Path(relative).parent))
    file = folder / Path(relative).name
    document = json.loads(file.read_text())
    file.write_text(json.dumps(change(document)))
    return folder


def _partial_store(world: World) -> Path:
    from superneurons.store import ActivationWriter

    writer = ActivationWriter(world.tmp / "partial", {"resid": (2, 4)}, 4)
    writer.append({"resid": np.zeros((2, 2, 4), np.float32)}, [{"label": "yes"}] * 2)
    writer.close()
    return world.tmp / "partial"


def _image_file(world: World, name: str, data: bytes) -> None:
    (world.tmp / name).write_bytes(data)


def _png_bytes(size: int = 16, noise: bool = False) -> bytes:
    import io

    buffer = io.BytesIO()
    if noise:  # incompressible, so a cut lands inside the pixel data
        pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
    else:
        Image.new("RGB", (size, size), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def _with_image(world: World, name: str, data: bytes) -> list:
    _image_file(world, name, data)
    rows = good_rows()
    rows[2]["image"] = name
    world.jsonl(rows)
    return world.extract()


def _with_missing_image(world: World, name: str) -> list:
    rows = good_rows()
    rows[2]["image"] = name
    world.jsonl(rows)
    return world.extract()


def _other_weights_store(document: dict) -> dict:
    document["meta"]["weights_fingerprint"] = "0123456789abcdef"
    document["meta"]["model"] = "someone/else"
    return document


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

CASES: dict[str, Case | object] = {
    # -- option values, refused as they are parsed ----------------------------------------------
    "alpha-nan": Case(lambda w: ["run", "--out", w.tmp / "o", "--alpha", "nan"], ("'--alpha'",)),
    "alpha-inf": Case(lambda w: _discover(w, "--alpha", "inf"), ("'--alpha'", "finite")),
    "n-probe-0": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--n-probe", "0", "--n-val", "0"], ("'--n-probe'",)
    ),
    "n-val-1": Case(lambda w: ["run", "--out", w.tmp / "o", "--n-val", "1"], ("'--n-val'",)),
    "extract-n-0": Case(lambda w: ["extract", "--out", w.tmp / "s", "--n", "0"], ("'--n'",)),
    "batch-size-0": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--batch-size", "0"], ("'--batch-size'",)
    ),
    "shard-index": Case(lambda w: ["run", "--out", w.tmp / "o", "--shard", "2/2"], ("'--shard'",)),
    "shard-form": Case(lambda w: ["run", "--out", w.tmp / "o", "--shard", "half"], ("'--shard'",)),
    "metric": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--metric", "auc"], ("'--metric'", "auc")
    ),
    "aggregate": Case(lambda w: _discover(w, "--aggregate", "median"), ("'--aggregate'",)),
    "baselines": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--baselines", "savs,ridge"], ("baselines", "ridge")
    ),
    "savs-without-attn": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--sites", "resid", "--baselines", "savs"],
        ("savs", "attn"),
    ),
    "exit-layers": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--exit-layers", "last"], ("'--exit-layers'",)
    ),
    "exit-layer-past-the-model": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--model", w.model, "--exit-layers", "9"],
        ("exit layers [9]", "deepest"),
    ),
    "seeds": Case(lambda w: ["run", "--out", w.tmp / "o", "--seeds", "0,x"], ("'--seeds'",)),
    "seeds-twice": Case(lambda w: ["run", "--out", w.tmp / "o", "--seeds", "1,1"], ("distinct",)),
    "max-layer": Case(lambda w: _discover(w, "--max-layer", "-1"), ("'--max-layer'",)),
    "sites": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--sites", "resid,bogus"], ("'--sites'",)
    ),
    "dtype": Case(lambda w: [*w.extract("--dtype", "fp8")], ("'--dtype'", "fp8")),
    "device-without-cuda": pytest.param(
        Case(lambda w: ["run", "--out", w.tmp / "o", "--device", "cuda"], ("'--device'", "cuda")),
        marks=NO_CUDA,
    ),
    "device-unknown": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--device", "quantum"], ("'--device'", "quantum")
    ),
    "fallback-margin": Case(
        lambda w: _predict(w, "--fallback-margin", "0.7"), ("--fallback-margin",)
    ),
    "template": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--template", "nope"], ("template='nope'",)
    ),
    "task": Case(lambda w: ["run", "--out", w.tmp / "o", "--task", "nope"], ("'--task'", "nope")),
    "threshold-nan": Case(
        lambda w: _discover(w, "--selection", "fixed", "--threshold", "nan"), ("'--threshold'",)
    ),
    "fixed-without-threshold": Case(
        lambda w: _discover(w, "--selection", "fixed"), ("selection='fixed' needs a threshold",)
    ),
    "top-k-0": Case(lambda w: _discover(w, "--selection", "top_k", "--top-k", "0"), ("--top-k",)),
    "split": Case(lambda w: ["scenes", "--out", w.tmp / "sc", "--split", "dev"], ("'--split'",)),
    "max-pixels-0": Case(lambda w: _predict(w, "--max-pixels", "0"), ("'--max-pixels'",)),
    "bench-models": Case(
        lambda w: ["bench", "early-exit", "--out", w.tmp / "b.json", "--models", "gpt-9"],
        ("'--models'", "gpt-9"),
    ),
    "bench-image-reuse-exit-layer": Case(
        lambda w: ["bench", "image-reuse", "--out", w.tmp / "r.json", "--exit-layer", "32"],
        ("--exit-layer 32", "32 layers"),
    ),
    "bench-batch-sizes": Case(
        lambda w: ["bench", "early-exit", "--out", w.tmp / "b.json", "--batch-sizes", "1,x"],
        ("'--batch-sizes'",),
    ),
    "scenes-objects": Case(
        lambda w: ["scenes", "--out", w.tmp / "sc", "--min-objects", "5", "--max-objects", "2"],
        ("min (5) <= max (2)",),
    ),
    "jsonl-and-task": Case(
        lambda w: (w.jsonl(good_rows()), [*w.extract(), "--task", "pope-random"])[1],
        ("--jsonl FILE stands for --task jsonl --data-dir FILE",),
    ),
    "batch-and-context": Case(
        lambda w: (
            w.jsonl(good_rows()),
            [
                "predict",
                "--classifier",
                w.run / "classifier",
                "--batch",
                w.tmp / "q.jsonl",
                "--context",
                "a hint",
            ],
        )[1],
        ("--context goes with IMAGE and QUESTION, not with --batch or --task",),
    ),
    "unknown-option": Case(lambda w: ["run", "--bogus"], ("--bogus",)),
    "predict-without-question": Case(
        lambda w: ["predict", "--classifier", w.run / "classifier"], ("IMAGE and QUESTION",)
    ),
    # -- outputs: never another's data, never an input ------------------------------------------
    "discover-into-a-users-folder": Case(
        lambda w: [*_discover(w)[:3], "--out", _user_dir(w)],
        ("mine", "thesis.tex", "not written by superneurons"),
    ),
    "discover-into-its-own-run": Case(
        lambda w: [*_discover(w)[:3], "--out", w.run], ("contains the input",)
    ),
    "discover-into-the-current-folder": Case(
        lambda w: ((w.tmp / "thesis.tex").write_text("x"), [*_discover(w)[:3], "--out", "."])[1],
        ("not written by superneurons",),
        cwd=True,
    ),
    "run-out-is-a-file": Case(
        lambda w: (
            (w.tmp / "notes.txt").write_text("x"),
            ["run", "--out", w.tmp / "notes.txt", "--model", w.model],
        )[1],
        ("notes.txt", "not a directory"),
    ),
    "evaluate-out-is-a-folder": Case(
        lambda w: (
            (w.tmp / "d").mkdir(),
            [*_evaluate(w, w.run / "classifier"), "--out", w.tmp / "d"],
        )[1],
        ("is a directory",),
    ),
    "evaluate-out-is-a-users-file": Case(
        lambda w: (
            (w.tmp / "notes.json").write_text('{"mine": 1}'),
            [*_evaluate(w, w.run / "classifier"), "--out", w.tmp / "notes.json"],
        )[1],
        ("notes.json", "not a JSON file written by superneurons"),
    ),
    "extract-into-a-users-folder": Case(
        lambda w: (
            _user_dir(w),
            w.jsonl(good_rows()),
            [
                "extract",
                "--out",
                w.tmp / "mine",
                "--jsonl",
                w.tmp / "q.jsonl",
                "--model",
                w.model,
                "--n",
                "4",
            ],
        )[2],
        ("not written by superneurons",),
    ),
    "scenes-into-a-users-folder": Case(
        lambda w: ["scenes", "--out", _user_dir(w), "--scenes", "1"],
        ("not written by superneurons",),
    ),
    # -- prompt templates and shift -------------------------------------------------------------
    **{
        f"template-file-{name}": Case(
            lambda w, text=text: (
                (w.tmp / "t.yaml").write_text(text),
                [
                    "run",
                    "--out",
                    w.tmp / "o",
                    "--model",
                    w.model,
                    "--template-file",
                    w.tmp / "t.yaml",
                ],
            )[1],
            expect,
        )
        for name, text, expect in (
            ("placeholder", "mine:\n  binary: '{query}?'\n", ("t.yaml", "mine.binary", "{query}")),
            ("not-yaml", "mine: {binary: [\n", ("t.yaml:", "not valid YAML")),
            ("key", "mine:\n  binray: '{question}'\n", ("t.yaml", "unknown key", "binray")),
            ("brace", "mine:\n  binary: '{question} {'\n", ("t.yaml", "mine.binary", "brace")),
            (
                "architecture",
                "mine:\n  overrides:\n    gpt4: {binary: '{question}'}\n",
                ("t.yaml", "unknown architecture 'gpt4'"),
            ),
            ("clash", "llava: {}\n", ("t.yaml", "['llava']", "built in")),
        )
    },
    "template-file-missing": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--template-file", w.tmp / "none.yaml"],
        ("none.yaml", "no such template file"),
    ),
    "template-unknown": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--model", w.model, "--val-template", "nope"],
        ("val_template='nope'", "unknown prompt template"),
    ),
    "template-text-and-template": Case(
        lambda w: [
            "run",
            "--out",
            w.tmp / "o",
            "--template",
            "plain",
            "--template-text",
            "{question}",
        ],
        ("template_text", "not both"),
    ),
    "template-text-placeholder": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--template-text", "Is it {thing}?"],
        ("template_text", "{thing}"),
    ),
    "families-none-in-records": Case(
        lambda w: (
            w.jsonl(good_rows()),
            [
                "run",
                "--out",
                w.tmp / "o",
                "--model",
                w.model,
                "--task",
                "jsonl",
                "--data-dir",
                w.tmp / "q.jsonl",
                "--probe-families",
                "colour",
            ],
        )[1],
        ("have no families",),
    ),
    "families-not-of-the-task": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--model", w.model, "--val-families", "colour"],
        ("val_families", "no family ['colour']", "existence"),
    ),
    "probe-and-val-share-images": Case(
        lambda w: (
            w.jsonl(good_rows()),
            [
                "run",
                "--out",
                w.tmp / "o",
                "--model",
                w.model,
                "--task",
                "jsonl",
                "--data-dir",
                w.tmp / "q.jsonl",
            ],
        )[1],
        ("share", "image(s)"),
    ),
    "run-into-a-store": Case(
        lambda w: ["run", "--out", _probe(w), "--model", w.model],
        ("holds a superneurons activation store, not a run",),
    ),
    "run-inside-its-data": Case(
        lambda w: (
            (w.tmp / "data").mkdir(),
            write_questions(w.tmp / "data" / "val.jsonl", good_rows()),
            ["run", "--task", "jsonl", "--data-dir", w.tmp / "data", "--out", w.tmp / "data/run"],
        )[2],
        ("lies inside the input",),
    ),
    "extract-over-its-questions": Case(
        lambda w: (
            w.jsonl(good_rows()),
            [*w.extract()[:1], "--out", w.tmp / "q.jsonl", *w.extract()[3:]],
        )[1],
        ("q.jsonl", "is the input"),
    ),
    # -- question files ---------------------------------------------------------------------------
    "line-is-a-number": Case(
        lambda w: (w.jsonl(good_rows(), {1: b"42"}), w.extract())[1], ("q.jsonl:2", "JSON object")
    ),
    "image-null": Case(
        lambda w: (
            w.jsonl([*good_rows(), {**good_rows()[0], "id": "n", "image": None}]),
            w.extract(),
        )[1],
        ("q.jsonl:5", "'image'"),
    ),
    "question-a-number": Case(
        lambda w: (w.jsonl([{**good_rows()[0], "question": 42}, *good_rows()[1:]]), w.extract())[1],
        ("q.jsonl:1", "'question'"),
    ),
    "choices-a-string": Case(
        lambda w: (
            w.jsonl([*good_rows(), {**good_rows()[0], "id": "c", "choices": "ab", "label": "A"}]),
            w.extract(),
        )[1],
        ("q.jsonl:5", "'choices'"),
    ),
    "duplicate-ids": Case(
        lambda w: (w.jsonl([*good_rows(), good_rows()[1]]), w.extract())[1],
        ("q.jsonl:5", "duplicate id 'q1'", "line 2"),
    ),
    "not-utf8": Case(
        lambda w: (
            w.jsonl(good_rows(), {2: b'{"image": "good.png", "question": "\xff"}'}),
            w.extract(),
        )[1],
        ("q.jsonl:3", "UTF-8"),
    ),
    "not-json": Case(
        lambda w: (w.jsonl(good_rows(), {0: b"{oops"}), w.extract())[1], ("q.jsonl:1", "valid JSON")
    ),
    "label-missing": Case(
        lambda w: (
            w.jsonl([{k: v for k, v in good_rows()[0].items() if k != "label"}]),
            w.extract(),
        )[1],
        ("q.jsonl:1", "['label']"),
    ),
    "label-maybe": Case(
        lambda w: (
            w.jsonl([*good_rows(), {**good_rows()[0], "id": "m", "label": "maybe"}]),
            w.extract(),
        )[1],
        ("q.jsonl:5", "label 'maybe'"),
    ),
    "empty-file": Case(
        lambda w: ((w.tmp / "q.jsonl").write_bytes(b""), w.extract())[1], ("q.jsonl", "no records")
    ),
    "questions-file-missing": Case(
        lambda w: [*w.extract()[:4], "--jsonl", w.tmp / "nowhere.jsonl", *w.extract()[5:]],
        ("nowhere.jsonl",),
    ),
    # -- images -----------------------------------------------------------------------------------
    "image-missing": Case(lambda w: _with_missing_image(w, "gone.png"), ("gone.png",)),
    "image-corrupt": Case(lambda w: _with_image(w, "broken.png", b"not a png"), ("broken.png",)),
    "image-truncated": Case(
        lambda w: _with_image(w, "cut.png", _png_bytes(noise=True)[:400]), ("cut.png",)
    ),
    "image-too-large": Case(
        lambda w: [*_with_image(w, "big.png", _png_bytes(32)), "--max-pixels", "300"],
        ("big.png", "32x32 = 1,024 pixels is over the limit of 300", "--max-pixels"),
    ),
    "question-beyond-the-context": Case(
        lambda w: (
            w.jsonl([{**good_rows()[0], "question": "why " * 10_000}, *good_rows()[1:]]),
            w.extract(),
        )[1],
        ("q0", "beyond the model's context"),
    ),
    "predict-corrupt-image": Case(
        lambda w: (
            _image_file(w, "broken.png", b"GIF89a"),
            _predict(w, image=w.tmp / "broken.png"),
        )[1],
        ("broken.png", "cannot read the image"),
    ),
    "predict-batch-missing-image": Case(
        lambda w: (
            w.jsonl([*good_rows(3), {**good_rows(1)[0], "id": "x", "image": "nope.png"}]),
            ["predict", "--classifier", w.run / "classifier", "--batch", w.tmp / "q.jsonl"],
        )[1],
        ("nope.png",),
    ),
    # -- stores, classifiers, models --------------------------------------------------------------
    "store-missing": Case(
        lambda w: ["discover", "--store", w.tmp / "nothing", "--out", w.tmp / "c"],
        ("no activation store",),
    ),
    "store-manifest-empty": Case(
        lambda w: (
            w.copy("activations/probe"),
            (w.tmp / "probe/manifest.json").write_bytes(b""),
            ["discover", "--store", w.tmp / "probe", "--out", w.tmp / "c"],
        )[2],
        ("probe/manifest.json", "not a valid store file"),
    ),
    "store-unfinished": Case(
        lambda w: ["discover", "--store", _partial_store(w), "--out", w.tmp / "c"],
        ("did not finish: 2/4 samples",),
    ),
    "store-array-truncated": Case(
        lambda w: (
            w.copy("activations/probe"),
            (w.tmp / "probe/resid.npy").write_bytes(b"\x93NUMPY"),
            ["discover", "--store", w.tmp / "probe", "--out", w.tmp / "c"],
        )[2],
        ("resid.npy",),
    ),
    "classifier-missing": Case(
        lambda w: _evaluate(w, w.tmp / "none"), ("none", "not a saved classifier")
    ),
    "classifier-json-broken": Case(
        lambda w: (
            w.copy("classifier"),
            (w.tmp / "classifier/classifier.json").write_text("{"),
            _evaluate(w, w.tmp / "classifier"),
        )[2],
        ("classifier.json", "not valid JSON"),
    ),
    "classifier-without-provenance": Case(
        lambda w: _evaluate(
            w,
            _tamper_json(
                w,
                "classifier/classifier.json",
                lambda d: {k: v for k, v in d.items() if k != "provenance"},
            ),
        ),
        ("classifier.json", "'provenance'"),
    ),
    "classifier-tensors-truncated": Case(
        lambda w: (
            w.copy("classifier"),
            [f.write_bytes(f.read_bytes()[:50]) for f in (w.tmp / "classifier").glob("neurons*")],
            _evaluate(w, w.tmp / "classifier"),
        )[2],
        ("neurons-", "safetensors"),
    ),
    "classifier-negative-index": Case(
        lambda w: _evaluate(
            w, _tamper_tensors(w, lambda t: t["selected.index"].__setitem__(0, -1))
        ),
        ("super neuron 0", "index -1", "outside the recorded shapes"),
    ),
    "store-of-other-weights": Case(
        lambda w: _evaluate(
            w,
            w.run / "classifier",
            _tamper_json(w, "activations/val/manifest.json", _other_weights_store),
        ),
        ("was fitted on", "someone/else", "weights_fingerprint"),
    ),
    "model-config-broken": Case(
        lambda w: (
            (w.tmp / "m").mkdir(),
            (w.tmp / "m/config.json").write_text("{"),
            ["run", "--out", w.tmp / "o", "--model", w.tmp / "m"],
        )[2],
        ("m/config.json", "not a valid model config"),
    ),
    "model-missing": Case(
        lambda w: ["run", "--out", w.tmp / "o", "--model", "nobody/no-such-vlm"],
        ("nobody/no-such-vlm", "not in the Hugging Face cache"),
        env={"HF_HUB_OFFLINE": "1"},
    ),
}


@pytest.fixture
def world(tmp_path, tiny_llava_checkpoint, tiny_run) -> World:
    image = tmp_path / "good.png"
    Image.new("RGB", (16, 16), "red").save(image)
    return World(tmp_path, tiny_llava_checkpoint, tiny_run[0], image)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_before_any_work_and_touches_nothing(world: World, case: Case):
    args = case.build(world)
    before = snapshot(world.tmp, world.run, world.model)
    done = superneurons(*args, env=case.env, cwd=world.tmp if case.cwd else None)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for words in case.expect:
        assert words in lines[0], lines[0]
    assert snapshot(world.tmp, world.run, world.model) == before


def test_every_problem_of_a_file_is_reported_at_once(world: World):
    rows = good_rows(6)
    rows[1]["label"] = "maybe"
    rows[3]["question"] = ""
    world.jsonl(rows, {5: b"[1, 2]"})
    done = superneurons(*world.extract())
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert [line.split(": ")[1].rsplit(":", 1)[1] for line in lines] == ["2", "4", "6"], lines
    assert not (world.tmp / "store").exists()


def test_a_label_outside_the_label_set_names_the_line(tmp_path):
    path = write_questions(
        tmp_path / "c.jsonl",
        [{"image": "a.png", "question": "q?", "label": "C", "choices": ["x", "y"]}],
    )
    with pytest.raises(DataError, match=r"c\.jsonl:1: label 'C' is not one of \['A', 'B'\]"):
        load_jsonl(path)


def test_empty_and_single_class_probing_sets_are_refused():
    yes = [Record(str(k), Path("a.png"), "q?", "yes") for k in range(5)]
    with pytest.raises(DataError, match="no 'no' samples"):
        balanced_sample(yes, 4, seed=0)
    with pytest.raises(DataError, match="no 'yes' samples among 0 records"):
        balanced_sample([], 4, seed=0)


def test_a_model_in_the_hf_cache_loads_offline(tmp_path, tiny_llava_checkpoint):
    import os
    import subprocess
    import sys

    snapshot_dir = tmp_path / "hub" / "models--someone--tiny-vlm" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_llava_checkpoint, snapshot_dir)
    (tmp_path / "hub" / "models--someone--tiny-vlm" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-vlm" / "refs" / "main").write_text("a" * 40)
    script = (
        "from superneurons.models.loading import load_model; m = load_model('someone/tiny-vlm');"
        "print(m.revision, type(m.model).__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["a" * 40, "LlavaForConditionalGeneration"]


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("torchvision") is not None,
    reason="needs a machine without torchvision",
)
def test_a_processor_missing_its_package_names_the_extra_to_install(tmp_path):
    from models.tiny import tiny_qwen2_vl

    tiny = tiny_qwen2_vl()  # saved with the real Qwen2-VL processor, which imports torchvision
    tiny.model.save_pretrained(tmp_path / "qwen")
    tiny.processor.tokenizer.save_pretrained(tmp_path / "qwen")
    tiny.processor.image_processor.save_pretrained(tmp_path / "qwen")
    (tmp_path / "qwen" / "processor_config.json").write_text(
        json.dumps({"processor_class": "Qwen2VLProcessor"})
    )
    done = superneurons(
        "run", "--out", tmp_path / "run", "--model", tmp_path / "qwen", "--n-probe", "4"
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "qwen2_vl processor needs a package that is not installed" in lines[0]
    assert "Torchvision" in lines[0] and "pip install 'superneurons[qwen]'" in lines[0]
    assert not (tmp_path / "run").exists()


def test_more_shards_than_records_is_refused_before_the_model_loads(tmp_path):
    out = tmp_path / "o"
    args = ["run", "--out", out, "--shard", "3/4", "--n-probe", "2", "--n-val", "2"]
    done = superneurons(*args, "--device", "cpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "fewer than its 4 shards" in lines[0], done.stderr
    assert not (out / "activations").exists()
