"""``python -m coremesh_node``: same as ``coremesh-node``."""

import sys

from .main import main

sys.exit(main())
