"""`python -m engine.service`: see :mod:`engine.service.serve`."""

import sys

from engine.service.serve import main

sys.exit(main())
