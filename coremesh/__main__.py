"""``python -m coremesh``: same as the ``coremesh`` operator CLI."""

import sys

from .cli.main import main

sys.exit(main())
