"""The deployable predictor: a saved classifier + its model, answering after layer k.

    predictor = SuperNeuronPredictor.from_pretrained("runs/default/classifier")
    predictor.predict([image], ["Is there a red cube?"])  # [Prediction(label="yes", ...)]

Multiple-choice questions are answered by asking one binary question per choice and picking the
choice with the highest vote score. With ``fallback_margin`` set, a sample whose vote is not
decisive (|score − 0.5| < margin) is answered by the full model instead (a cascade).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from superneurons.capture import capture, prepare_inputs
from superneurons.classifiers import Estimator, LayerActivations, Split
from superneurons.classifiers.artifact import load_classifier
from superneurons.data.images import open_rgb
from superneurons.data.prompts import LETTERS, Prompter, binary_choice_question
from superneurons.early_exit import early_exit_activations
from superneurons.errors import ConfigError, ModelError
from superneurons.image_cache import ImageFeatureCache
from superneurons.metrics import parse_yes_no
from superneurons.models.adapters import adapter_for
from superneurons.models.fingerprint import model_fingerprint
from superneurons.models.loading import LoadedModel, load_model
from superneurons.prefix_cache import PrefixKVCache
from superneurons.preflight import check_prompt_lengths


class ModelMismatchError(ModelError):
    """The classifier was fitted on another model's activations."""


@dataclass
class Prediction:
    label: str
    score: float  # the estimator's score of the answer (super neurons: the fraction voting yes)
    exit_layer: int  # the last decoder layer that ran
    fallback: bool = False  # answered by the full model (cascade)
    # Not in to_json: each choice's score (multiple choice), the prompt's tokens (all rows).
    choice_scores: list[float] | None = field(default=None, repr=False)
    prompt_tokens: int = field(default=0, repr=False)

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "score": round(self.score, 4),
            "exit_layer": self.exit_layer,
            **({"fallback": True} if self.fallback else {}),
        }


def undecided(scores: np.ndarray, margin: float) -> np.ndarray:
    """The cascade's rule: a vote share within ``margin`` of 0.5 is not decisive, and the full
    model answers instead (margin 0: never; above 0.5: always)."""
    return np.abs(np.asarray(scores, dtype=float) - 0.5) < margin


class SuperNeuronPredictor:
    """Answers categorical questions from any fitted estimator that reads activations (super
    neurons by default; :mod:`superneurons.classifiers.contract`), running the model only to the
    deepest layer the estimator reads."""

    def __init__(
        self,
        classifier: Estimator,
        loaded: LoadedModel,
        prompter: Prompter | str = "plain",
        fallback_margin: float | None = None,
        batch_size: int = 16,
        image_cache: ImageFeatureCache | None = None,
        prefix_cache: PrefixKVCache | None = None,
    ):
        self.classifier, self.loaded = classifier, loaded
        self.image_cache = image_cache  # reuses images' vision features (superneurons.image_cache)
        self.prefix_cache = prefix_cache  # reuses image prefixes' keys and values (prefix_cache)
        adapter = adapter_for(loaded.model)
        if isinstance(prompter, str):
            prompter = Prompter.for_model(prompter, adapter.name)
        self.prompter = prompter
        self.fallback_margin, self.batch_size = fallback_margin, batch_size
        self.needed: dict[str, list[int]] = dict(classifier.reads_ or {})
        if not self.needed:
            raise ConfigError(
                f"{type(classifier).__name__} reads no activation: nothing to exit early after"
            )
        self.exit_layer = max(max(layers) for layers in self.needed.values())
        self.sites = {
            site: (adapter.n_layers(loaded.model), adapter.site_width(loaded.model, site))
            for site in self.needed
        }

    @classmethod
    def from_pretrained(
        cls,
        classifier_dir: str | Path,
        model: str | LoadedModel | None = None,
        dtype: str = "fp32",
        device: str = "auto",
        device_map: str | dict | None = None,
        **kwargs,
    ) -> SuperNeuronPredictor:
        """Load a classifier saved by ``discover``/``run`` and the model it was fitted on.

        ``model`` defaults to the model recorded with the classifier; any other model is refused
        unless its weights fingerprint matches. ``device_map`` spreads the model over devices
        (:func:`~superneurons.models.loading.load_model`).
        """
        classifier, document = load_classifier(classifier_dir)
        provenance = document["provenance"]
        if not isinstance(model, LoadedModel):
            model = load_model(model or provenance["model"], dtype, device, device_map)
        expected, found = provenance.get("weights_fingerprint"), model_fingerprint(model.model)
        if expected != found:
            raise ModelMismatchError(
                f"{classifier_dir} was fitted on {provenance.get('model')!r} (weights "
                f"fingerprint {expected}); {model.model_id!r} has fingerprint {found}: refusing "
                f"to read super neurons from a different model"
            )
        adapter = adapter_for(model.model)
        for site, shape in classifier.sites_.items():
            actual = (adapter.n_layers(model.model), adapter.site_width(model.model, site))
            if tuple(shape) != actual:
                raise ModelMismatchError(
                    f"{classifier_dir}: site {site!r} is {tuple(shape)} (layers, width) in the "
                    f"classifier but {actual} in {model.model_id!r}"
                )
        # The prompt exactly as the probing set was asked (older classifiers: by template name).
        if isinstance(provenance.get("prompt"), dict):
            prompter = Prompter.from_json(provenance["prompt"])
        else:
            prompter = provenance.get("template", "plain")
        return cls(classifier, model, prompter, **kwargs)

    def _prompts(
        self, questions: Sequence[str], contexts: Sequence[str | None] | None = None
    ) -> list[str]:
        contexts = contexts if contexts is not None else [None] * len(questions)
        processor = self.loaded.processor
        return [
            self.prompter.chat(processor, q, context=c)
            for q, c in zip(questions, contexts, strict=True)
        ]

    def _exit_splits(self, images, questions, prompts) -> Iterator[Split]:
        """Batch by batch, the activations the estimator reads, from a forward that stops after
        ``exit_layer`` (``prompts``: the questions' chat prompts, from ``_prompts``)."""
        for start in range(0, len(questions), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            inputs = prepare_inputs(self.loaded.processor, list(images[chunk]), prompts[chunk])
            values = early_exit_activations(self.loaded.model, inputs, self.needed)
            values = {key: v.float().cpu().numpy() for key, v in values.items()}
            yield Split(LayerActivations(values, self.sites), questions[chunk])

    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        contexts: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(answers, scores) per (image, binary question): ``predict`` (True = yes) and
        ``decision_function`` of the estimator (super neurons: the fraction voting yes)."""
        prompts = self._prompts(questions, contexts)
        answers, scores, _ = _answer_rows(
            [self] * len(questions), images, questions, prompts, self.batch_size,
            self.image_cache, self.prefix_cache,
        )  # fmt: skip
        return answers, scores

    def votes(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        contexts: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Every super neuron's yes/no vote (N, K) per (image, binary question), from layer k."""
        splits = self._exit_splits(images, questions, self._prompts(questions, contexts))
        return np.concatenate([self.classifier.votes(split) for split in splits])

    def full_model_answers(self, images, questions, contexts=None) -> list[str | None]:
        """The full model's parsed yes/no answers (greedy ``generate``)."""
        answers = generate_answers(self.loaded, images, self._prompts(questions, contexts))
        return [parse_yes_no(answer) for answer in answers]

    def predict(
        self,
        images: Sequence[Image.Image | str | Path],
        questions: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
        contexts: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """One prediction per (image, question); ``choices[i]`` makes question i multiple choice
        and ``contexts[i]`` is its context (a ScienceQA hint, say), asked as at extraction."""
        return predict_together(
            [self] * len(questions), images, questions, choices, contexts,
            image_cache=self.image_cache, prefix_cache=self.prefix_cache,
        )  # fmt: skip


def binary_questions(question: str, choices: Sequence[str] | None) -> list[str]:
    """The binary questions a question is answered as: one per choice (multiple choice), or
    itself."""
    return [binary_choice_question(question, c) for c in choices] if choices else [question]


def predict_together(
    predictors: Sequence[SuperNeuronPredictor],
    images: Sequence[Image.Image | str | Path],
    questions: Sequence[str],
    choices: Sequence[Sequence[str] | None] | None = None,
    contexts: Sequence[str | None] | None = None,
    batch_size: int | None = None,
    image_cache: ImageFeatureCache | None = None,
    prefix_cache: PrefixKVCache | None = None,
) -> list[Prediction]:
    """One prediction per (predictor, image, question): question i answered by ``predictors[i]``.

    Predictors of the same loaded model share each batch's forward, which runs to the deepest
    exit layer among them; each reads only its own layers, so its answers do not depend on what
    else is in the batch. A multiple-choice question is one binary question per choice; a
    predictor with a ``fallback_margin`` sends its undecided binary questions to the full model
    (batched too). ``batch_size``: rows per forward (default: the first predictor's).
    ``image_cache`` reuses the vision tower's output for images seen before (LLaVA);
    ``prefix_cache`` the keys and values of their prompts' image prefix (LLaVA, Qwen-VL).
    """
    n = len(questions)
    if len(images) != n or len(predictors) != n:
        raise ConfigError(
            f"{len(images)} images and {len(predictors)} predictors for {n} questions"
        )
    if not n:
        return []
    loaded = predictors[0].loaded
    if any(p.loaded.model is not loaded.model for p in predictors):
        raise ConfigError("predictors answering together must share one loaded model")
    images = [open_rgb(i) if isinstance(i, str | Path) else i for i in images]
    choices = list(choices) if choices is not None else [None] * n
    contexts = list(contexts) if contexts is not None else [None] * n
    # Every multiple-choice question becomes one binary question per choice: the rows.
    owner, row_questions = [], []
    for i, (question, options) in enumerate(zip(questions, choices, strict=True)):
        texts = binary_questions(question, options)
        owner.extend([i] * len(texts))
        row_questions.extend(texts)
    owner = np.array(owner)
    row_predictors = [predictors[i] for i in owner]
    row_images = [images[i] for i in owner]
    processor = loaded.processor
    prompts = [
        p.prompter.chat(processor, q, context=contexts[i])
        for p, q, i in zip(row_predictors, row_questions, owner, strict=True)
    ]
    names = [f"question {i}" for i in owner]
    check_prompt_lengths(loaded.config, processor, prompts, names, [i.size for i in row_images])
    answers, scores, tokens = _answer_rows(
        row_predictors,
        row_images,
        row_questions,
        prompts,
        batch_size or predictors[0].batch_size,
        image_cache,
        prefix_cache,
    )
    predictions = []
    for i, options in enumerate(choices):
        mine = np.flatnonzero(owner == i)
        extra = {"prompt_tokens": int(tokens[mine].sum())}
        if options:
            best = int(np.argmax(scores[mine]))
            label, score = LETTERS[best], scores[mine[best]]
            extra["choice_scores"] = [float(x) for x in scores[mine]]
        else:
            label, score = ("yes" if answers[mine[0]] else "no"), scores[mine[0]]
        predictions.append(Prediction(label, float(score), predictors[i].exit_layer, **extra))
    _cascade(predictors, images, questions, choices, contexts, predictions)
    return predictions


def _answer_rows(
    predictors, images, questions, prompts, batch_size, image_cache=None, prefix_cache=None
):
    """(answers, scores, prompt tokens) per row, from one early-exit forward per batch of rows
    that computes every layer any of the batch's predictors reads."""
    loaded = predictors[0].loaded
    answers, scores = np.zeros(len(questions), dtype=bool), np.zeros(len(questions))
    tokens = np.zeros(len(questions), dtype=int)
    for start in range(0, len(questions), batch_size):
        rows = range(start, min(start + batch_size, len(questions)))
        needed: dict[str, set[int]] = {}
        sites: dict[str, tuple[int, int]] = {}
        batch_predictors = list({id(predictors[r]): predictors[r] for r in rows}.values())
        for p in batch_predictors:
            for site, layers in p.needed.items():
                needed.setdefault(site, set()).update(layers)
            sites.update(p.sites)
        inputs = prepare_inputs(
            loaded.processor, [images[r] for r in rows], [prompts[r] for r in rows]
        )
        mask = inputs.get("attention_mask")
        counts = mask.sum(dim=1) if mask is not None else [inputs["input_ids"].shape[1]] * len(rows)
        tokens[start : start + len(rows)] = np.asarray(counts)
        needed_layers = {site: sorted(layers) for site, layers in needed.items()}
        prepare = image_cache.inject if image_cache is not None else None
        if prefix_cache is not None:
            values = prefix_cache.activations(loaded.model, inputs, needed_layers, prepare)
        else:
            inputs = prepare(loaded.model, inputs) if prepare is not None else inputs
            values = early_exit_activations(loaded.model, inputs, needed_layers)
        values = {key: v.float().cpu().numpy() for key, v in values.items()}
        for p in batch_predictors:
            mine = np.array([r - start for r in rows if predictors[r] is p])
            split = Split(
                LayerActivations({k: v[mine] for k, v in values.items()}, sites),
                [questions[start + m] for m in mine],
            )
            answers[start + mine] = np.asarray(p.classifier.predict(split), dtype=bool)
            scores[start + mine] = np.asarray(p.classifier.decision_function(split), dtype=float)
    return answers, scores, tokens


def generate_answers(
    loaded: LoadedModel, images, prompts: Sequence[str], max_new_tokens: int = 128
) -> list[str]:
    """The full model's text answers to chat ``prompts`` (one greedy ``generate``)."""
    result = capture(
        loaded.model, loaded.processor, list(images), list(prompts), sites=(),
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return result.answers


def _cascade(predictors, images, questions, choices, contexts, predictions: list[Prediction]):
    """Answer the undecided binary questions of predictors with a ``fallback_margin`` by the
    full model (its parsed answer), all of them in one batch."""
    fallback = [
        i
        for i, (p, options, prediction) in enumerate(
            zip(predictors, choices, predictions, strict=True)
        )
        if p.fallback_margin is not None
        and not options
        and undecided(np.array([prediction.score]), p.fallback_margin)[0]
    ]
    if not fallback:
        return
    loaded = predictors[0].loaded
    prompts = [
        predictors[i].prompter.chat(loaded.processor, questions[i], context=contexts[i])
        for i in fallback
    ]
    answers = generate_answers(loaded, [images[i] for i in fallback], prompts)
    last_layer = adapter_for(loaded.model).n_layers(loaded.model) - 1
    for i, answer in zip(fallback, answers, strict=True):
        parsed = parse_yes_no(answer)
        if parsed is not None:
            predictions[i] = replace(
                predictions[i], label=parsed, exit_layer=last_layer, fallback=True
            )
