"""Estimators over captured activations (and a question-only baseline), with scikit-learn's
fit/predict contract."""

from superneurons.classifiers.question_only import QuestionOnlyClassifier
from superneurons.classifiers.super_neurons import (
    ActivationSource,
    ArrayActivations,
    NotFittedError,
    SelectedNeuron,
    SuperNeuronClassifier,
    as_activation_source,
)

__all__ = [
    "ActivationSource",
    "ArrayActivations",
    "NotFittedError",
    "QuestionOnlyClassifier",
    "SelectedNeuron",
    "SuperNeuronClassifier",
    "as_activation_source",
]
