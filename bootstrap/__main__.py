"""``python -m coremesh_bootstrap``: same as ``coremesh-bootstrap``."""

import sys

from .main import main

sys.exit(main())
