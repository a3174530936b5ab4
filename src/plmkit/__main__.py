"""`python -m plmkit` runs the same command line as `plmkit`."""

import sys

from plmkit.cli import main

sys.exit(main())
