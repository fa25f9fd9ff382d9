"""CRL DER blobs with deferred indexing, compact revoked serials, validated-path cache.

- ``crls`` gains ``der`` (the CRL as received, kept until its serials are indexed) and
  ``indexed`` (false while a background indexer has yet to fill ``revoked_serials``).
- ``revoked_serials`` becomes compact: the serial as its DER INTEGER content bytes, the
  revocation date as ``YYYYMMDDHHMMSS`` text (UTC) and the CRLReason code, keyed by
  (crl_id, serial). The old rows (hex serials, one issuer key per row) cannot be
  converted without their CRLs, so the revocation cache is emptied: CRLs are fetched or
  read again on the next check, and until then the policy decides (fail closed by default).
- ``validated_paths`` caches a path that passed RFC 5280 validation, by the exact inputs
  that determined it, with the time window in which that result holds.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("revoked_serials")
    op.execute("DELETE FROM crls")
    with op.batch_alter_table("crls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("der", sa.LargeBinary(), nullable=True))
        batch_op.add_column(
            sa.Column("indexed", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    op.create_table(
        "revoked_serials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("crl_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.LargeBinary(), nullable=False),
        sa.Column("revoked_at", sa.String(length=14), nullable=False),
        sa.Column("reason", sa.SmallInteger(), nullable=True),
        sa.ForeignKeyConstraint(["crl_id"], ["crls.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("revoked_serials", schema=None) as batch_op:
        batch_op.create_index("ix_revoked_crl_serial", ["crl_id", "serial"], unique=False)
    op.create_table(
        "validated_paths",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("validated_paths")
    op.drop_table("revoked_serials")
    op.execute("DELETE FROM crls")
    with op.batch_alter_table("crls", schema=None) as batch_op:
        batch_op.drop_column("indexed")
        batch_op.drop_column("der")
    op.create_table(
        "revoked_serials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("crl_id", sa.Integer(), nullable=False),
        sa.Column("issuer_key", sa.String(length=128), nullable=False),
        sa.Column("serial", sa.String(length=42), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["crl_id"], ["crls.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("revoked_serials", schema=None) as batch_op:
        batch_op.create_index("ix_revoked_issuer_serial", ["issuer_key", "serial"], unique=False)
        batch_op.create_index(batch_op.f("ix_revoked_serials_crl_id"), ["crl_id"], unique=False)
