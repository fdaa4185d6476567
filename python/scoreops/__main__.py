import sys

from scoreops.cli import main

sys.exit(main())
