"""The final comparison of the UniCon flow (paper 000): SupCon-Real, SupCon-Mixed and UniCon at
the chosen weights, under the same protocol, on the test split."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from raysynth.config.schema import RunConfig
from raysynth.progress import counter
from raysynth.seeding import stable_seed
from raysynth.train.protocol import Data, class_groups, evaluate

log = logging.getLogger("raysynth.flows")

METHODS = ("supcon_real", "supcon_mixed", "unicon")


def final_accuracies(
    test: Data, weights: list[float], cfg: RunConfig, storage: Path
) -> dict[str, dict[str, Any]]:
    """SupCon-Real, SupCon-Mixed and UniCon at ``weights``, same protocol, test split; each
    method's summary has its accuracy per class (``per_class``) beside the overall one.
    ``test`` is arrays (:class:`ProtocolData`) or datasets the Train workers read
    (:class:`~raysynth.train.protocol.StreamedData`).

    Each encoder run is resumable: a finished run is never redone, an interrupted one continues
    from its last checkpoint.
    """
    seed = stable_seed(cfg.seed, "final")
    test = replace(test, groups={**test.groups, **class_groups(test.num_classes)})
    out = {}
    with counter("final training", len(METHODS) * cfg.protocol.n_contr, "runs") as bar:
        for method in METHODS:
            w = weights if method == "unicon" else None
            res = evaluate(test, method, w, cfg, seed, storage, method, save_models=True,
                           resumable=True, on_run=lambda m=method: bar.update(1, method=m))
            out[method] = res.summary()
            log.info("final %s: %.4f ± %.4f (test)", method, res.mean, res.std)
    return out
