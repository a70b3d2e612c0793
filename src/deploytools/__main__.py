"""``python -m deploytools``: see ``deploytools.commands``."""

import sys

from deploytools.commands import main

sys.exit(main())
