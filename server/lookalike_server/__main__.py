"""`python -m lookalike_server`: the same command as `lookalike-server`."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
