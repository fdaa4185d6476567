"""``python -m scoreops.evaluate``: run the evaluator job (:func:`scoreops.evaluate.job.main`)."""

import sys

from scoreops.evaluate.job import main

sys.exit(main())
