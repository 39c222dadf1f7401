"""`python -m adr_scale.tune`: runs `adr_scale.search.driver.main`."""

import sys

from adr_scale.search.driver import main

if __name__ == "__main__":
    sys.exit(main())
