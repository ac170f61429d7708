"""`python -m tokenforge.cli` is the `tokenforge` command."""

from tokenforge.cli import main

raise SystemExit(main())
