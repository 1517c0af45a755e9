"""The served model and its classifiers: a batch of questions in, one answer each out.

All classifiers are fitted on the one loaded model (a classifier of another model is refused
when the server starts). A batch mixing classifiers shares one early-exit forward up to the
deepest exit layer among them (:func:`superneurons.predictor.predict_together`), and each
classifier reads only its own layers. Runs on the batcher's one model thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.special

from superneurons.classifiers.probes import LinearProbeClassifier, SparseProbeClassifier
from superneurons.data.prompts import LETTERS
from superneurons.errors import ConfigError, DataError
from superneurons.image_cache import ImageFeatureCache
from superneurons.metrics import parse_choice, parse_yes_no
from superneurons.models.adapters import adapter_for
from superneurons.models.loading import LoadedModel
from superneurons.predictor import (
    Prediction,
    SuperNeuronPredictor,
    binary_questions,
    generate_answers,
    predict_together,
)
from superneurons.prefix_cache import PrefixKVCache
from superneurons.preflight import overlong_prompts
from superneurons.serve.protocol import Answer, Question


def yes_probability(predictor: SuperNeuronPredictor, score: float) -> float:
    """P(yes) of a score: a probe's log-odds through the logistic function; the share of votes
    for yes (super neurons, SAV heads) as it is."""
    if isinstance(predictor.classifier, LinearProbeClassifier | SparseProbeClassifier):
        return float(scipy.special.expit(score))  # no overflow for scores far below 0
    return min(max(score, 0.0), 1.0)


class Engine:
    """Answers batches of :class:`Question` with the named classifiers of one model, and with
    the model itself (greedy ``generate``, asked as the first classifier's probing set was)
    under the name ``full_model`` when one is given."""

    def __init__(
        self,
        loaded: LoadedModel,
        predictors: Mapping[str, SuperNeuronPredictor],
        full_model: str | None = None,
        image_cache_bytes: int = 0,
        prefix_cache_bytes: int = 0,
    ):
        if not predictors:
            raise ConfigError("serve needs at least one --classifier")
        if full_model in predictors:
            raise ConfigError(f"--full-model {full_model}: a classifier is served under that name")
        self.loaded, self.predictors, self.full_model = loaded, dict(predictors), full_model
        # Used by the model thread alone, so they need no lock.
        self.image_cache = ImageFeatureCache(image_cache_bytes)
        self.prefix_cache = PrefixKVCache.for_prompters(
            prefix_cache_bytes, loaded.processor, [p.prompter for p in self.predictors.values()]
        )

    @property
    def models(self) -> list[str]:
        """The names the API serves."""
        return sorted([*self.predictors, *([self.full_model] if self.full_model else [])])

    def cache_counts(self) -> dict[str, int]:
        """The image-feature and prefix caches' hits and misses so far."""
        return {
            f"{kind}_{count}": getattr(cache, count)
            for kind, cache in (("image", self.image_cache), ("prefix", self.prefix_cache))
            for count in ("hits", "misses")
        }

    @classmethod
    def from_dirs(
        cls,
        classifiers: Mapping[str, str | Path],
        model: str | None = None,
        dtype: str = "fp32",
        device: str = "auto",
        fallback_margin: float | None = None,
        max_batch_size: int = 32,
        full_model: str | None = None,
        image_cache_bytes: int = 0,
        prefix_cache_bytes: int = 0,
    ) -> Engine:
        """Load each classifier directory under its name, on one model: the first classifier's
        (or ``model``); a classifier fitted on another model is refused."""
        predictors: dict[str, SuperNeuronPredictor] = {}
        loaded: LoadedModel | str | None = model
        for name, directory in classifiers.items():
            try:
                predictor = SuperNeuronPredictor.from_pretrained(
                    directory,
                    loaded,
                    dtype=dtype,
                    device=device,
                    fallback_margin=fallback_margin,
                    batch_size=max_batch_size,
                )
            except ConfigError as error:
                raise ConfigError(f"--classifier {name}={directory}: {error}") from None
            predictors[name], loaded = predictor, predictor.loaded
        return cls(loaded, predictors, full_model, image_cache_bytes, prefix_cache_bytes)

    def answer(self, questions: Sequence[Question]) -> list[Answer | DataError]:
        """One answer per question: the classifiers' from one shared early-exit forward per
        batch, the full model's from one ``generate``. A question whose prompt is beyond the
        model's context gets its DataError in place of an answer, and the others are answered:
        it fails alone, not with its batch."""
        refused = self._refusals(questions)
        answers: list[Answer | DataError | None] = list(refused)
        asked = [i for i, refusal in enumerate(refused) if refusal is None]
        full = [i for i in asked if questions[i].model == self.full_model]
        early = [i for i in asked if questions[i].model != self.full_model]
        for i, answer in zip(full, self._generated([questions[i] for i in full]), strict=True):
            answers[i] = answer
        for i, answer in zip(early, self._early([questions[i] for i in early]), strict=True):
            answers[i] = answer
        return answers

    def _prompts(self, question: Question) -> list[str]:
        """The chat prompts ``question`` is asked as: by the full model, or by its classifier
        (one per choice for multiple choice)."""
        processor = self.loaded.processor
        if question.model == self.full_model:
            prompter = next(iter(self.predictors.values())).prompter
            return [prompter.chat(processor, question.question, question.choices, question.context)]
        prompter = self.predictors[question.model].prompter
        return [
            prompter.chat(processor, text, context=question.context)
            for text in binary_questions(question.question, question.choices)
        ]

    def _refusals(self, questions: Sequence[Question]) -> list[DataError | None]:
        """Per question, the DataError of a prompt beyond the model's context, or None."""
        owner, prompts = [], []
        for i, question in enumerate(questions):
            mine = self._prompts(question)
            owner.extend([i] * len(mine))
            prompts.extend(mine)
        problems = overlong_prompts(
            self.loaded.config,
            self.loaded.processor,
            prompts,
            ["the question"] * len(prompts),
            [questions[i].image.size for i in owner],
        )
        refused: list[DataError | None] = [None] * len(questions)
        for i, problem in zip(owner, problems, strict=True):
            if problem and refused[i] is None:
                refused[i] = DataError(problem)
        return refused

    def _generated(self, questions: Sequence[Question]) -> list[Answer]:
        if not questions:
            return []
        prompts = [self._prompts(q)[0] for q in questions]
        texts = generate_answers(self.loaded, [q.image for q in questions], prompts)
        last_layer = adapter_for(self.loaded.model).n_layers(self.loaded.model) - 1
        answers = []
        for q, text in zip(questions, texts, strict=True):
            if q.choices:
                classes = list(LETTERS[: len(q.choices)])
                label = parse_choice(text, len(q.choices))
            else:
                classes, label = ["no", "yes"], parse_yes_no(text)
            probs = (
                [float(c == label) for c in classes] if label else [1 / len(classes)] * len(classes)
            )
            score = max(probs) if q.choices else probs[-1]  # binary: P(yes)
            answers.append(
                Answer(label or text.strip(), classes, probs, score, last_layer, False, 0)
            )
        return answers

    def _early(self, questions: Sequence[Question]) -> list[Answer]:
        if not questions:
            return []
        predictors = [self.predictors[q.model] for q in questions]
        predictions = predict_together(
            predictors,
            [q.image for q in questions],
            [q.question for q in questions],
            [q.choices for q in questions],
            [q.context for q in questions],
            batch_size=max(1, sum(len(q.choices or [0]) for q in questions)),
            image_cache=self.image_cache,
            prefix_cache=self.prefix_cache,
        )
        return [
            self._answer(p, q, prediction)
            for p, q, prediction in zip(predictors, questions, predictions, strict=True)
        ]

    @staticmethod
    def _answer(predictor: SuperNeuronPredictor, question: Question, prediction: Prediction):
        if question.choices:
            scores = np.array(prediction.choice_scores, dtype=float)
            shares = np.array([yes_probability(predictor, s) for s in scores])
            probs = (
                shares / shares.sum() if shares.sum() > 0 else np.full(len(shares), 1 / len(shares))
            )
            classes = list(LETTERS[: len(question.choices)])
        else:
            p_yes = yes_probability(predictor, prediction.score)
            probs, classes = np.array([1.0 - p_yes, p_yes]), ["no", "yes"]
        return Answer(
            label=prediction.label,
            classes=classes,
            probs=[float(p) for p in probs],
            score=prediction.score,
            exit_layer=prediction.exit_layer,
            fallback=prediction.fallback,
            prompt_tokens=prediction.prompt_tokens,
        )
