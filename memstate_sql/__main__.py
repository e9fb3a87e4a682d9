"""``python -m memstate_sql``: the ``memstate-sql`` command."""

from __future__ import annotations

import sys

from memstate_sql.cli import main

if __name__ == "__main__":
    sys.exit(main())
