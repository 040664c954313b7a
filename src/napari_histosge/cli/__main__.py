"""``python -m napari_histosge.cli``: the ``histosge`` command."""

import sys

from .main import main

sys.exit(main())
