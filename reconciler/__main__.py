"""``python -m reconciler``: the ``reconciler`` command (:mod:`reconciler.quick`)."""

import sys

from reconciler.quick import main

if __name__ == "__main__":  # importing the module (as a walk of the package does) runs nothing
    sys.exit(main())
