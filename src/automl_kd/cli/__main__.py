"""``python -m automl_kd.cli``: the command line (what worker processes run)."""

import sys

from .main import main

sys.exit(main())
