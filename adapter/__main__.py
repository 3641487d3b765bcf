"""`python -m adapter`: the gRPC frontend (`adapter.frontend.main`)."""

import sys

from adapter.frontend.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
