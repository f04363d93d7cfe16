"""``python -m engine``: the same entry point as the ``radflow`` console script."""

from engine.cli import main

raise SystemExit(main())
