"""`python -m gateway ...` is the `hogx` command."""

import sys

from gateway.cli import main

sys.exit(main())
