"""Evaluation on validation data: super neurons beside the model's own answers.

Results schema (``results.json``)::

    {"format": "superneurons-results/1",
     "model", "dataset", "n_probe", "n_val", "alpha", "metric", "threshold", "aggregate",
     "selected": [{"site", "layer", "index", "polarity", "score"}],
     "sn": METRICS, "model_answers": METRICS, "agreement_rate",
     "question_only": METRICS, "model_unparseable": int, "sn_layers": {layer: count},
     "per_family": {family: {"n", "sn": METRICS, "model_answers": METRICS, "agreement_rate",
                             "question_only": METRICS}}}

where METRICS = {"accuracy", "precision", "recall", "f1", "ci95": {metric: [low, high]}}. The
positive class is "yes". An unparseable model answer counts as wrong (the opposite of the label)
and is excluded from the agreement rate (null when no answer parses). ``question_only`` (present
when blind predictions are given) scores a baseline that sees the question but not the image
(:class:`~superneurons.classifiers.QuestionOnlyClassifier`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from superneurons.classifiers import SuperNeuronClassifier
from superneurons.errors import ClassifierError
from superneurons.metrics import METRICS, agreement_rate, binary_metrics, bootstrap_ci
from superneurons.store import ActivationStore

RESULTS_FORMAT = "superneurons-results/1"
# What must agree between a classifier's provenance and a store it reads: the same weights.
_SAME_MODEL_KEYS = ("weights_fingerprint", "architecture")


def check_same_model(
    classifier: SuperNeuronClassifier, provenance: dict, store: ActivationStore, where: str
) -> None:
    """Refuse a store extracted with another model than the classifier was fitted on, or one
    lacking a site (or its shape) that the super neurons read. ``where`` names the two."""
    for key in _SAME_MODEL_KEYS:
        fitted, given = provenance.get(key), store.meta.get(key)
        if fitted != given:
            raise ClassifierError(
                f"{where}: the classifier was fitted on {provenance.get('model')!r} ({key} "
                f"{fitted}), the store was extracted with {store.meta.get('model')!r} ({key} "
                f"{given}); a classifier reads only the model it was fitted on"
            )
    for site in {neuron.site for neuron in classifier.selected_}:
        fitted, given = classifier.sites_.get(site), store.sites.get(site)
        if given is None or tuple(fitted) != tuple(given):
            raise ClassifierError(
                f"{where}: the super neurons read site {site!r} {tuple(fitted)} (layers, width); "
                f"the store has {'no such site' if given is None else tuple(given)}"
            )


def _rounded(value: float) -> float | None:
    """JSON has no NaN: an undefined rate (no parseable answer) is null."""
    return None if np.isnan(value) else round(float(value), 4)


def _scored(pred: np.ndarray, labels: np.ndarray, n_boot: int, seed: int) -> dict:
    result = {k: round(float(v), 4) for k, v in binary_metrics(pred, labels).items()}
    result["ci95"] = {
        m: [round(float(x), 4) for x in bootstrap_ci(pred, labels, m, n_boot=n_boot, seed=seed)]
        for m in METRICS
    }
    return result


def describe_selection(classifier: SuperNeuronClassifier) -> dict:
    """The settings and super neurons of a fitted classifier, as in ``results.json``."""
    return {
        "alpha": classifier.alpha,
        "metric": classifier.metric,
        "aggregate": classifier.aggregate,
        "threshold": None if classifier.threshold_ is None else round(classifier.threshold_, 6),
        "selected": [
            {
                "site": s.site,
                "layer": s.layer,
                "index": s.index,
                "polarity": s.polarity,
                "score": round(s.score, 4),
            }
            for s in classifier.selected_
        ],
    }


def evaluate(
    classifier: SuperNeuronClassifier,
    store: ActivationStore,
    n_boot: int = 1000,
    seed: int = 0,
    question_only: Sequence[str] | None = None,
) -> dict:
    """Metrics of the SN vote and of the model's answers on ``store``, overall and per family.

    ``question_only``: a blind baseline's "yes"/"no" per record, scored beside them.
    """
    records = store.records
    if question_only is not None and len(question_only) != len(records):
        raise ValueError(f"{len(question_only)} question-only answers for {len(records)} records")
    labels = np.array([r["label"] == "yes" for r in records])
    parsed = [r["parsed"] for r in records]
    valid = np.array([p is not None for p in parsed])
    # An unparseable answer is wrong whatever the label.
    model_pred = np.array(
        [p == "yes" if p is not None else not y for p, y in zip(parsed, labels, strict=True)]
    )
    votes = classifier.votes(store)
    sn_pred = classifier.predict(store)
    families = np.array([r.get("family") or "all" for r in records], dtype=object)

    blind = None if question_only is None else np.array([a == "yes" for a in question_only])

    def block(rows: np.ndarray) -> dict:
        scored = {
            "n": int(rows.sum()),
            "sn": _scored(sn_pred[rows], labels[rows], n_boot, seed),
            "model_answers": _scored(model_pred[rows], labels[rows], n_boot, seed),
            "agreement_rate": _rounded(agreement_rate(votes[rows], model_pred[rows], valid[rows])),
        }
        if blind is not None:
            scored["question_only"] = _scored(blind[rows], labels[rows], n_boot, seed)
        return scored

    everything = block(np.ones(len(records), dtype=bool))
    return {
        "n_val": len(records),
        **{k: v for k, v in everything.items() if k != "n"},
        "model_unparseable": int((~valid).sum()),
        "sn_layers": dict(sorted(Counter(s.layer for s in classifier.selected_).items())),
        "per_family": {f: block(families == f) for f in sorted(set(families))},
    }


@dataclass
class Results:
    """What ``results.json`` holds (schema in the module docstring); ``to_json`` gives it.

    ``dataset`` is the task name (``run``) or the validation store's path (``evaluate``); the
    fields a command does not know (``n_probe`` for ``evaluate``, say) are left out.
    """

    model: str | None
    revision: str | None
    dataset: str
    selection: dict  # describe_selection()
    scores: dict  # evaluate()
    seed: int | None = None
    n_probe: int | None = None
    template: str | None = None
    seconds: float | None = None
    config: dict | None = None

    def to_json(self) -> dict:
        head = {
            "format": RESULTS_FORMAT,
            "model": self.model,
            "revision": self.revision,
            "dataset": self.dataset,
            "seed": self.seed,
            "n_probe": self.n_probe,
            "template": self.template,
        }
        tail = {"seconds": self.seconds, "config": self.config}
        return {
            **{k: v for k, v in head.items() if v is not None},
            **self.selection,
            **self.scores,
            **{k: v for k, v in tail.items() if v is not None},
        }


def build_results(
    classifier: SuperNeuronClassifier,
    store: ActivationStore,
    provenance: dict,
    dataset: str,
    seed: int = 0,
    question_only: Sequence[str] | None = None,
    **known: object,
) -> Results:
    """The results of ``classifier`` on the validation ``store``: one builder for ``run`` and
    ``evaluate``. ``provenance`` is the classifier's (model id, revision, template); ``known``
    fills the remaining :class:`Results` fields (``n_probe``, ``seconds``, ``config``)."""
    return Results(
        model=provenance.get("model"),
        revision=provenance.get("revision"),
        dataset=dataset,
        selection=describe_selection(classifier),
        scores=evaluate(classifier, store, seed=seed, question_only=question_only),
        seed=seed,
        template=provenance.get("template"),
        **known,
    )
