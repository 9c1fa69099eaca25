"""``python -m coremesh_relay``: same as ``coremesh-relay``."""

import sys

from .main import main

sys.exit(main())
