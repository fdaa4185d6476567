"""``python -m scoreops.serving``: the container entrypoint (see :mod:`scoreops.serving.cli`)."""

import sys

from scoreops.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
