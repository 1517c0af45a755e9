"""Estimators over captured activations (and a question-only baseline), with scikit-learn's
fit/predict contract over a :class:`Split` (:mod:`superneurons.classifiers.contract`)."""

from superneurons.classifiers.base import ActivationSource, NotFittedError
from superneurons.classifiers.contract import Estimator, ModelAnswers, Split
from superneurons.classifiers.question_only import QuestionOnlyClassifier
from superneurons.classifiers.super_neurons import (
    ArrayActivations,
    LayerActivations,
    SelectedNeuron,
    SuperNeuronClassifier,
    as_activation_source,
)

__all__ = [
    "ActivationSource",
    "ArrayActivations",
    "Estimator",
    "LayerActivations",
    "ModelAnswers",
    "NotFittedError",
    "QuestionOnlyClassifier",
    "SelectedNeuron",
    "Split",
    "SuperNeuronClassifier",
    "as_activation_source",
]
