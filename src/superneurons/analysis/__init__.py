"""The paper's analyses of a finished run, each a public function reading the run's stores and
classifier (no re-extraction) and returning a JSON-able dict (schemas in docs/analyses.md):

- :func:`layers` (paper Fig. 3b): per site and layer, how many neurons beat the model on the
  probing set, the best neuron there, and a linear probe's validation accuracy;
- :func:`alpha` (Fig. 3a): the binarisation threshold swept, and each site's activation scale;
- :func:`agreement` (Fig. 4): the selection threshold t swept: number of SNs, their vote's
  validation accuracy and the agreement rate AR@t, and AR's rank correlation with t.

``superneurons analyze RUN_DIR --what layers,alpha,agreement`` writes
``RUN_DIR/analysis/NAME.json``.
"""

from superneurons.analysis.agreement import agreement
from superneurons.analysis.alpha import alpha
from superneurons.analysis.layers import layers
from superneurons.analysis.run_data import RunData

ANALYSES = {"layers": layers, "alpha": alpha, "agreement": agreement}

__all__ = ["ANALYSES", "RunData", "agreement", "alpha", "layers"]
