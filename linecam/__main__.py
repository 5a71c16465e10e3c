"""`python -m linecam` runs the same command as the `linecam` console script."""

import sys

from linecam.cli import main

sys.exit(main())
