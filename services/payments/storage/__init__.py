"""Payments storage: tables, repository, unit of work, migrations."""
