"""The paper's analyses of a finished run, each a public function reading the run's stores and
classifier (no re-extraction) and returning a JSON-able dict (schemas in docs/analyses.md):

- :func:`layers` (paper Fig. 3b): per site and layer, how many neurons beat the model on the
  probing set, the best neuron there, and a linear probe's validation accuracy;
- :func:`alpha` (Fig. 3a): the binarisation threshold swept, and each site's activation scale;
- :func:`agreement` (Fig. 4): the selection threshold t swept: number of SNs, their vote's
  validation accuracy and the agreement rate AR@t, and AR's rank correlation with t;
- :func:`probe_size` (Fig. 5): metrics as the probing set grows;
- :func:`shift`: SNs fitted under one prompt or distribution, validated under another;
- :func:`early_exit` ("exit"): accuracy against the exit layer, with the measured speed-up;
- :func:`claims`: the paper's claims, each with its numbers, its rule and a verdict.

``superneurons analyze RUN_DIR [--what layers,alpha,...]`` writes ``RUN_DIR/analysis/NAME.json``.
"""

from superneurons.analysis.agreement import agreement
from superneurons.analysis.alpha import alpha
from superneurons.analysis.claims import claims
from superneurons.analysis.exit import early_exit
from superneurons.analysis.layers import layers
from superneurons.analysis.probe_size import probe_size
from superneurons.analysis.run_data import RunData
from superneurons.analysis.shift import shift

# By name, in the order ``analyze`` runs them: claims reads the four before it.
ANALYSES = {
    "layers": layers,
    "alpha": alpha,
    "agreement": agreement,
    "probe-size": probe_size,
    "shift": shift,
    "exit": early_exit,
    "claims": claims,
}

CLAIMS_READ = ("layers", "alpha", "agreement", "probe-size", "shift")


def analyze(run: RunData, names) -> dict[str, dict]:
    """The analyses ``names`` of ``run``, by name, in :data:`ANALYSES` order; ``claims``
    computes those it reads that are not among ``names``."""
    done: dict[str, dict] = {}
    for name in [n for n in ANALYSES if n in names]:
        if name == "claims":
            inputs = [done[n] if n in done else ANALYSES[n](run) for n in CLAIMS_READ]
            done[name] = claims(run, *inputs)
        else:
            done[name] = ANALYSES[name](run)
    return done


__all__ = [
    "ANALYSES",
    "CLAIMS_READ",
    "RunData",
    "agreement",
    "alpha",
    "analyze",
    "claims",
    "early_exit",
    "layers",
    "probe_size",
    "shift",
]
