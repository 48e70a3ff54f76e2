"""``python -m reconciler``: the ``reconciler`` command (:mod:`reconciler.quick`)."""

import sys

from reconciler.quick import main

sys.exit(main())
