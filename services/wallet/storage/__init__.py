"""The wallet's storage: tables, repository, unit of work, migrations."""
