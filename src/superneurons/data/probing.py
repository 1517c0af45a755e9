"""Probing and validation sets: balanced, seeded samples of binary records."""

from __future__ import annotations

import numpy as np

from superneurons.data.records import BINARY_LABELS, DataError, Record


def balanced_sample(
    records: list[Record], n: int, seed: int, name: str = "probing set"
) -> list[Record]:
    """Up to ``n`` binary records, half "yes" and half "no" (fewer when a class runs out), seeded.

    The result keeps the records' original order, so the same inputs give the same list.
    """
    if n < 2:
        raise DataError(f"{name}: asked for {n} samples; need at least 2 (one per class)")
    by_label = {
        label: [i for i, r in enumerate(records) if r.is_binary and r.label == label]
        for label in BINARY_LABELS
    }
    empty = [label for label, idx in by_label.items() if not idx]
    if empty:
        counts = {label: len(idx) for label, idx in by_label.items()}
        raise DataError(
            f"{name}: no {empty[0]!r} samples among {len(records)} records "
            f"(binary label counts: {counts}); a probing set needs both classes"
        )
    per_class = min(n // 2, *(len(idx) for idx in by_label.values()))
    rng = np.random.default_rng(seed)
    chosen = sorted(
        int(i) for idx in by_label.values() for i in rng.choice(idx, per_class, replace=False)
    )
    return [records[i] for i in chosen]
