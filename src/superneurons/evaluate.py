"""Evaluation on validation data: every estimator (super neurons, baselines, the model's own
answers; :mod:`superneurons.classifiers.contract`) scored on the same split, each against the
model's answers by a paired test (:mod:`superneurons.significance`).

Results schema (``results.json``, documented in docs/method.md)::

    {"format": "superneurons-results/2",
     "model", "revision", "dataset", "seed", "n_probe", "template",
     "alpha", "metric", "aggregate", "threshold", "selected": [{"site", "layer", "index",
     "polarity", "score"}], "sn_layers": {layer: count},
     "n_val", "model_unparseable", "agreement_rate",
     "estimators": {name: {**METRICS, "exit_layer", "vs_model": PAIRED,
                           "per_family": {family: {"n", **METRICS, "vs_model": PAIRED}}}},
     "per_family": {family: {"n", "agreement_rate"}},
     "shifted", "sets": {"probe": CONDITION, "val": CONDITION},
     "exit_tradeoff": [{"k", "estimator", "exit_layer", "accuracy", "ci95", "speedup",
                        "pareto"}],
     "seconds", "config"}

where METRICS = {"accuracy", "precision", "recall", "f1", "ci95": {metric: [low, high]}} and
PAIRED = {"b", "c", "p_value", "diff_ci95"} (b: questions only the estimator gets right, c: only
the model; McNemar's exact p-value; paired bootstrap interval of the accuracy difference);
CONDITION = {"task", "template", "families"} is what a set was drawn from and asked with, and
``shifted`` says whether the two differ (a run's reference set is then in
``activations/reference``). The
positive class is "yes". An unparseable model answer counts as wrong (the opposite of the label)
and is excluded from the agreement rate (null when no answer parses). ``exit_layer`` is the
deepest decoder layer an estimator reads (the model's last for ``model``, null for one that
reads no activation). Names: ``super_neurons``, ``savs``, ``linear_probe``, ``sparse_probe``,
``question_only``, ``model``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from superneurons.classifiers import Estimator, Split, SuperNeuronClassifier
from superneurons.errors import ClassifierError
from superneurons.metrics import METRICS, agreement_rate, binary_metrics, bootstrap_ci
from superneurons.significance import compare
from superneurons.store import ActivationStore

RESULTS_FORMAT = "superneurons-results/2"
SEEDS_FORMAT = "superneurons-seeds/1"  # run --seeds: the summary over seeds (pipeline.run_seeds)
# The store of a shifted run's reference set (OUT/activations/reference): validation questions
# drawn and asked as the probing set was.
REFERENCE = "reference"
# What must agree between a classifier's provenance and a store it reads: the same weights.
_SAME_MODEL_KEYS = ("weights_fingerprint", "architecture")


def check_same_model(
    classifier: Estimator, provenance: dict, store: ActivationStore, where: str
) -> None:
    """Refuse a store extracted with another model than the classifier was fitted on, or one
    lacking a site (or its shape) that the classifier reads. ``where`` names the two."""
    for key in _SAME_MODEL_KEYS:
        fitted, given = provenance.get(key), store.meta.get(key)
        if fitted != given:
            raise ClassifierError(
                f"{where}: the classifier was fitted on {provenance.get('model')!r} ({key} "
                f"{fitted}), the store was extracted with {store.meta.get('model')!r} ({key} "
                f"{given}); a classifier reads only the model it was fitted on"
            )
    for site in classifier.reads_:
        fitted, given = classifier.sites_.get(site), store.sites.get(site)
        if given is None or tuple(fitted) != tuple(given):
            raise ClassifierError(
                f"{where}: the classifier reads site {site!r} {tuple(fitted)} (layers, width); "
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


SN, MODEL = "super_neurons", "model"  # the super neurons' and the model's own entries


def exit_layer(estimator: Estimator, n_layers: int | None) -> int | None:
    """The deepest layer ``estimator`` reads: the last for the whole model (``reads_`` None),
    None for one that reads no activation."""
    reads = estimator.reads_
    if reads is None:
        return None if n_layers is None else n_layers - 1
    return max((max(layers) for layers in reads.values()), default=None)


def evaluate(
    estimators: Mapping[str, Estimator],
    split: Split,
    n_boot: int = 1000,
    seed: int = 0,
    families: Sequence[str | None] | None = None,
    answers: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Metrics of every estimator on ``split``, overall and per family (``families``: one per
    record, default all "all"), each against the model's answers (``"model"``) when it is there,
    with the agreement rate of the super neurons (``"super_neurons"``) with the model.
    ``answers``: the estimators' predictions when already computed (:func:`predictions`).

    Entries come in this order: the super neurons, the model, then every other estimator in
    the mapping's order.
    """
    labels = split.labels
    predicted = dict(answers) if answers is not None else predictions(estimators, split)
    correct = {name: values == labels for name, values in predicted.items()}
    order = [n for n in (SN, MODEL) if n in estimators] + [
        n for n in estimators if n not in (SN, MODEL)
    ]
    agree = SN in estimators and MODEL in estimators
    valid = estimators[MODEL].valid(split) if MODEL in estimators else None
    votes = estimators[SN].votes(split) if agree else None
    families = np.array(
        [f or "all" for f in families] if families is not None else ["all"] * len(labels),
        dtype=object,
    )
    n_layers = next(iter(split.sites.values()), (None,))[0]
    groups = {f: families == f for f in sorted(set(families))}

    def scored(name: str, rows: np.ndarray) -> dict:
        entry = _scored(predicted[name][rows], labels[rows], n_boot, seed)
        if MODEL in estimators and name != MODEL:
            entry["vs_model"] = compare(correct[name][rows], correct[MODEL][rows], n_boot, seed)
        return entry

    everything = np.ones(len(labels), dtype=bool)
    result: dict = {"n_val": len(labels)}
    if MODEL in estimators:
        result["model_unparseable"] = int((~valid).sum())
    if agree:
        result["agreement_rate"] = _rounded(agreement_rate(votes, predicted[MODEL], valid))
    if SN in estimators:
        layers = Counter(s.layer for s in estimators[SN].selected_)
        result["sn_layers"] = dict(sorted(layers.items()))
    result["estimators"] = {}
    for name in order:
        entry = scored(name, everything)
        entry["exit_layer"] = exit_layer(estimators[name], n_layers)
        entry["per_family"] = {
            f: {"n": int(rows.sum()), **scored(name, rows)} for f, rows in groups.items()
        }
        result["estimators"][name] = entry
    result["per_family"] = {}
    for f, rows in groups.items():
        result["per_family"][f] = {"n": int(rows.sum())}
        if agree:
            rate = agreement_rate(votes[rows], predicted[MODEL][rows], valid[rows])
            result["per_family"][f]["agreement_rate"] = _rounded(rate)
    return result


def predictions(estimators: Mapping[str, Estimator], split: Split) -> dict[str, np.ndarray]:
    """Every estimator's answers on ``split``, by name: (N,) bool, True = "yes"."""
    return {name: np.asarray(e.predict(split), dtype=bool) for name, e in estimators.items()}


def prediction_lines(answers: Mapping[str, np.ndarray], store) -> bytes:
    """JSON lines, one per question of ``store``: its id, label and family, and every
    estimator's answer ("yes"/"no") by name — what a paired test over several runs pools."""
    lines = []
    for row, record in enumerate(store.records):
        line = {k: record.get(k) for k in ("id", "label", "family")}
        line.update({name: "yes" if values[row] else "no" for name, values in answers.items()})
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


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
    shifted: bool | None = None
    sets: dict | None = None
    exit_tradeoff: list | None = None
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
        tail = {
            "shifted": self.shifted,
            "sets": self.sets,
            "exit_tradeoff": self.exit_tradeoff,
            "seconds": self.seconds,
            "config": self.config,
        }
        always = ("format", "model", "dataset")
        return {
            **{k: v for k, v in head.items() if v is not None or k in always},
            **self.selection,
            **self.scores,
            **{k: v for k, v in tail.items() if v is not None},
        }


def build_results(
    estimators: Mapping[str, Estimator],
    store: ActivationStore,
    provenance: dict,
    dataset: str,
    seed: int = 0,
    questions: Sequence[str] | None = None,
    answers: Mapping[str, np.ndarray] | None = None,
    **known: object,
) -> Results:
    """The results of ``estimators`` (the super neurons as ``"super_neurons"``) on the
    validation ``store``: one builder for ``run`` and ``evaluate``. ``questions`` are the store's
    question texts (for text-only estimators); ``answers`` their predictions when computed
    already; ``provenance`` is the classifier's (model id, revision, template); ``known`` fills
    the remaining :class:`Results` fields (``n_probe``, ``seconds``, ``config``).
    """
    split = Split.from_store(store, questions)
    families = [r.get("family") for r in store.records]
    return Results(
        model=provenance.get("model"),
        revision=provenance.get("revision"),
        dataset=dataset,
        selection=describe_selection(estimators[SN]) if SN in estimators else {},
        scores=evaluate(estimators, split, seed=seed, families=families, answers=answers),
        seed=seed,
        template=provenance.get("template"),
        **known,
    )
