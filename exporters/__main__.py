"""``python -m exporters``: the command line in ``exporters.cli``."""

import sys

from .cli import main

sys.exit(main())
