"""``python -m coremesh``: same as the ``coremesh`` operator CLI."""

import sys

from .cli import main

sys.exit(main())
