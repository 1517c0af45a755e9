"""``superneurons bench cascade``: accuracy against time as the fallback margin varies.

Every validation question is answered both ways once — super neurons after layer k (early exit)
and the full model (greedy ``generate``) — with each path timed over the whole set. A cascade with
margin m answers from the super neurons when |score − 0.5| ≥ m and falls back to the full model
otherwise, so its accuracy follows from the two answers and its expected time per question is
``early + fallback_fraction × full``: m = 0 is "always early exit", m > 0.5 "always full model".
"""

from __future__ import annotations

import time

import numpy as np

from superneurons.data.records import Record
from superneurons.predictor import SuperNeuronPredictor, undecided

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.51)


def cascade_curve(
    predictor: SuperNeuronPredictor, records: list[Record], margins=MARGINS, images=None
) -> dict:
    """Accuracy, fallback fraction and expected seconds per question, for each margin
    (``images``: the records' images, when already read)."""
    images = images if images is not None else [r.load_image() for r in records]
    questions = [r.question for r in records]
    contexts = [r.context for r in records]
    truth = np.array([r.label == "yes" for r in records])
    start = time.perf_counter()
    early, scores = predictor.answer(images, questions, contexts)
    early_s = (time.perf_counter() - start) / len(records)
    start = time.perf_counter()
    full_answers = []
    for i in range(0, len(records), predictor.batch_size):
        chunk = slice(i, i + predictor.batch_size)
        full_answers += predictor.full_model_answers(
            images[chunk], questions[chunk], contexts[chunk]
        )
    full_s = (time.perf_counter() - start) / len(records)
    # An unparseable full-model answer keeps the super neurons' answer.
    full = np.array([early[i] if a is None else a == "yes" for i, a in enumerate(full_answers)])
    full_correct = [
        a is not None and (a == "yes") == t for a, t in zip(full_answers, truth, strict=True)
    ]
    points = []
    for margin in margins:
        fallback = undecided(scores, margin)
        answer = np.where(fallback, full, early)
        points.append(
            {
                "margin": margin,
                "fallback_fraction": round(float(fallback.mean()), 4),
                "accuracy": round(float((answer == truth).mean()), 4),
                "seconds_per_question": round(early_s + float(fallback.mean()) * full_s, 5),
            }
        )
    return {
        "n": len(records),
        "exit_layer": predictor.exit_layer,
        "early_exit": {
            "accuracy": round(float((early == truth).mean()), 4),
            "seconds_per_question": round(early_s, 5),
        },
        "full_model": {
            "accuracy": round(float(np.mean(full_correct)), 4),
            "unparseable": sum(a is None for a in full_answers),
            "seconds_per_question": round(full_s, 5),
        },
        "curve": points,
    }
