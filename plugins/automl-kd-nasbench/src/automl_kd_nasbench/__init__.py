"""NAS-Bench-Macro and NAS-Bench-201 for automl-kd: spaces, table look-up evaluators, permuted variants.

Installed as a separate distribution (``pip install -e plugins/automl-kd-nasbench``); automl-kd finds it
through the ``automl_kd`` entry-point group. Cite Su et al. (CVPR 2021) for NAS-Bench-Macro and Dong & Yang
(ICLR 2020) for NAS-Bench-201 wherever results built on these tables are shown.
"""

from __future__ import annotations

from .evaluators import MACRO_ACCURACY_SOURCE, NB201_ACCURACY_SOURCE, MacroTableEvaluator, NB201TableEvaluator
from .macro import NASBenchMacroSpace, build_macro_network, macro_cost
from .nb201 import NASBench201Space, arch_string, nb201_cost
from .permuted import PermutedMacroSpace, PermutedNB201Space, derangement
from .tables import (
    MACRO_URL,
    MacroTable,
    NB201Table,
    load_macro_table,
    load_nb201_table,
    resolve_macro_path,
)

__all__ = [
    "MACRO_ACCURACY_SOURCE",
    "MACRO_URL",
    "NB201_ACCURACY_SOURCE",
    "MacroTable",
    "MacroTableEvaluator",
    "NASBench201Space",
    "NASBenchMacroSpace",
    "NB201Table",
    "NB201TableEvaluator",
    "PermutedMacroSpace",
    "PermutedNB201Space",
    "arch_string",
    "build_macro_network",
    "derangement",
    "load_macro_table",
    "load_nb201_table",
    "macro_cost",
    "nb201_cost",
    "resolve_macro_path",
]
