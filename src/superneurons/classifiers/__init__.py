"""Estimators over captured activations, all with the scikit-learn fit/predict contract."""

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
    "SelectedNeuron",
    "SuperNeuronClassifier",
    "as_activation_source",
]
