"""`python -m adr_scale.evaluate`."""

import sys

from adr_scale.evaluate.cli import main

sys.exit(main())
