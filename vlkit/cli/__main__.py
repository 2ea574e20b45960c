"""``python -m vlkit.cli``: the ``vlkit`` command."""

import sys

from vlkit.cli.main import main

sys.exit(main())
