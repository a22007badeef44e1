"""``python -m lmops``: the ``lmops`` command."""

import sys

from .cli import main

sys.exit(main())
