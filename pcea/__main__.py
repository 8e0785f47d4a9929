"""``python -m pcea`` is the same as the ``pcea`` command (which may restart itself once: pcea/runtime.py)."""

from pcea.cli import main

raise SystemExit(main())
