"""The deployable predictor: a saved classifier + its model, answering after layer k.

    predictor = SuperNeuronPredictor.from_pretrained("runs/default/classifier")
    predictor.predict([image], ["Is there a red cube?"])  # [Prediction(label="yes", ...)]

Multiple-choice questions are answered by asking one binary question per choice and picking the
choice with the highest vote score. With ``fallback_margin`` set, a sample whose vote is not
decisive (|score − 0.5| < margin) is answered by the full model instead (a cascade).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
from superneurons.metrics import parse_yes_no
from superneurons.models.adapters import adapter_for
from superneurons.models.fingerprint import model_fingerprint
from superneurons.models.loading import LoadedModel, load_model
from superneurons.preflight import check_prompt_lengths


class ModelMismatchError(ModelError):
    """The classifier was fitted on another model's activations."""


@dataclass
class Prediction:
    label: str
    score: float  # the estimator's score of the answer (super neurons: the fraction voting yes)
    exit_layer: int  # the last decoder layer that ran
    fallback: bool = False  # answered by the full model (cascade)

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
    ):
        self.classifier, self.loaded = classifier, loaded
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
        return self._answer(images, questions, self._prompts(questions, contexts))

    def _answer(self, images, questions, prompts) -> tuple[np.ndarray, np.ndarray]:
        answers, scores = [], []
        for split in self._exit_splits(images, questions, prompts):
            answers.append(np.asarray(self.classifier.predict(split), dtype=bool))
            scores.append(np.asarray(self.classifier.decision_function(split), dtype=float))
        return np.concatenate(answers), np.concatenate(scores)

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
        result = capture(
            self.loaded.model,
            self.loaded.processor,
            list(images),
            self._prompts(questions, contexts),
            sites=(),
            max_new_tokens=128,
        )
        return [parse_yes_no(answer) for answer in result.answers]

    def predict(
        self,
        images: Sequence[Image.Image | str | Path],
        questions: Sequence[str],
        choices: Sequence[Sequence[str] | None] | None = None,
        contexts: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """One prediction per (image, question); ``choices[i]`` makes question i multiple choice
        and ``contexts[i]`` is its context (a ScienceQA hint, say), asked as at extraction."""
        if len(images) != len(questions):
            raise ConfigError(f"{len(images)} images for {len(questions)} questions")
        images = [open_rgb(i) if isinstance(i, str | Path) else i for i in images]
        choices = list(choices) if choices is not None else [None] * len(questions)
        contexts = list(contexts) if contexts is not None else [None] * len(questions)
        # Expand every multiple-choice question into one binary question per choice.
        flat_images, flat_questions, flat_contexts, owner = [], [], [], []
        for i, (image, question, options) in enumerate(
            zip(images, questions, choices, strict=True)
        ):
            for text in (
                [binary_choice_question(question, c) for c in options] if options else [question]
            ):
                flat_images.append(image)
                flat_questions.append(text)
                flat_contexts.append(contexts[i])
                owner.append(i)
        prompts = self._prompts(flat_questions, flat_contexts)
        names = [f"question {i}" for i in owner]
        check_prompt_lengths(
            self.loaded.config, self.loaded.processor, prompts, names, flat_images[0]
        )
        answers, scores = self._answer(flat_images, flat_questions, prompts)
        owner = np.array(owner)
        predictions = []
        for i, options in enumerate(choices):
            mine = np.flatnonzero(owner == i)
            if options:
                best = int(np.argmax(scores[mine]))
                label, score = LETTERS[best], scores[mine[best]]
            else:
                label, score = ("yes" if answers[mine[0]] else "no"), scores[mine[0]]
            predictions.append(Prediction(label, float(score), self.exit_layer))
        if self.fallback_margin is not None:
            self._cascade(images, questions, choices, contexts, predictions)
        return predictions

    def _cascade(self, images, questions, choices, contexts, predictions: list[Prediction]):
        """Answer undecided binary questions with the full model (its parsed answer)."""
        scores = np.array([p.score for p in predictions])
        binary = np.array([not options for options in choices])
        fallback = np.flatnonzero(binary & undecided(scores, self.fallback_margin)).tolist()
        if not fallback:
            return
        answers = self.full_model_answers(
            [images[i] for i in fallback],
            [questions[i] for i in fallback],
            [contexts[i] for i in fallback],
        )
        last_layer = adapter_for(self.loaded.model).n_layers(self.loaded.model) - 1
        for i, answer in zip(fallback, answers, strict=True):
            if answer is not None:
                predictions[i] = Prediction(answer, predictions[i].score, last_layer, fallback=True)
