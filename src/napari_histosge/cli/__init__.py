"""The ``histosge`` command line: one module per group of commands.

- :mod:`.slide` — ``convert``, ``run``, ``predict`` and ``demo``: one slide at a time;
- :mod:`.cohort` — ``train`` and ``batch``: many sections or slides;
- :mod:`.evaluate` — ``evaluate``: held-out accuracy and calibration;
- :mod:`.main` — the parser and the entry point; :mod:`._common` — arguments and checks
  shared by the groups.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
