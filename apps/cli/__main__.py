"""`python -m apps.cli` is the `tokenforge` command."""

from apps.cli import main

raise SystemExit(main())
