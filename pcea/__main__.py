"""``python -m pcea`` is the same as the ``pcea`` command."""

from pcea.cli import main

raise SystemExit(main())
