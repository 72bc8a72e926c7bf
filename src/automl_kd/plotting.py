"""matplotlib for files: every PNG automl-kd writes (the report, the IG gallery, the proposer comparison)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only: never a window, works without a display).

    Imported here, not at module level: the backend must be chosen before pyplot is first imported, and
    matplotlib is a second or more of import time that commands without plots should not pay.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
