"""`python -m edgepipe.runtime --bundle DIR ...`: the bundle runner from the installed package,
so the host times and checks a bundle without running any file from it."""

import sys

from .cli import main

sys.exit(main())
