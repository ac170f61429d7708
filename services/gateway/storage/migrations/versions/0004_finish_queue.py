"""gateway: the queue is named for what it carries, requests' finishes (what is left to
do with a hold, then the receipt): receipt_queue -> finish_queue

A gateway of the previous release still writes `receipt_queue` during a rolling
upgrade: the view of that name keeps its reads and plain inserts working; its insert
with ON CONFLICT fails on the view, and that gateway then finishes the request at once
(the wallet's side, then the receipt), which its code already does when the queue
cannot take a finish. The view goes in a later release.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "gateway"
INDEXES = ("queued", "account", "hold")


def upgrade() -> None:
    op.rename_table("receipt_queue", "finish_queue", schema=SCHEMA)
    for name in INDEXES:
        op.execute(f"ALTER INDEX {SCHEMA}.receipt_queue_{name} RENAME TO finish_queue_{name}")
    op.execute(f"CREATE VIEW {SCHEMA}.receipt_queue AS SELECT * FROM {SCHEMA}.finish_queue")


def downgrade() -> None:
    op.execute(f"DROP VIEW {SCHEMA}.receipt_queue")
    for name in INDEXES:
        op.execute(f"ALTER INDEX {SCHEMA}.finish_queue_{name} RENAME TO receipt_queue_{name}")
    op.rename_table("finish_queue", "receipt_queue", schema=SCHEMA)
