"""``python -m servicerouter.simulator``: same as ``servicerouter simulate``."""

import sys

from .cli import main

sys.exit(main())
