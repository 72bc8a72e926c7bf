"""matplotlib for files: every PNG automl-kd writes (the report, the IG gallery, the proposer comparison)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only: never a window, works without a display), with text
    drawn literally (``text.parse_math`` off: a ``$`` in a label is a dollar sign).

    Imported here, not at module level: the backend must be chosen before pyplot is first imported, and
    matplotlib is a second or more of import time that commands without plots should not pay.
    """
    import matplotlib

    matplotlib.use("Agg")
    # every label comes from a study (proposer names, loss-term names, parameters): shown as written, never read
    # as mathtext ("$\\undefinedcmd{x}$" would stop the figure with a parse error)
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt
