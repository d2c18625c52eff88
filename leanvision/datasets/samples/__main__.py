"""``python -m leanvision.datasets.samples --regenerate`` rewrites the sample files."""

import sys

from leanvision.datasets.samples import main

sys.exit(main())
