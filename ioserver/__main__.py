"""``python -m ioserver serve | ping | stats | top``."""

import sys

from .cli import main

sys.exit(main())
