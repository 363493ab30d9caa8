"""``python -m zkp verify ...``: see :mod:`zkp.cli`."""

from zkp.cli import main

raise SystemExit(main())
