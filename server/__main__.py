"""`python -m server` = the `unmask` command."""

import sys

from server.cli import main

sys.exit(main())
