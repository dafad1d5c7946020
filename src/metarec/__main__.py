"""``python -m metarec`` is the ``metarec`` command."""

from metarec.cli import main

raise SystemExit(main())
