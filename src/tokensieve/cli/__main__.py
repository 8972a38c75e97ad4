"""``python -m tokensieve.cli``."""

import sys

from tokensieve.cli import main

sys.exit(main())
