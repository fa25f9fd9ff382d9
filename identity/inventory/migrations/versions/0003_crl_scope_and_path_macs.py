"""CRLs by issuer name and scope, entries of indirect CRLs, authenticated path records.

- ``crls`` is keyed by signer, scope and number (RFC 5280: a CRL number is unique for an
  issuer and scope) instead of signer and number, and its sha256 is unique: two processes
  storing the same CRL at once both succeed (INSERT … ON CONFLICT DO NOTHING). It gains
  ``issuer_name`` (the name in the CRL's issuer field, as idm.validator.names compares
  names) and ``scope`` (issuingDistributionPoint and deltaCRLIndicator, as text).
- ``revoked_serials`` gains ``cert_issuer``: the certificate issuer an entry of an
  indirect CRL is about, when it is not the CRL's issuer.
- ``validated_paths`` gains ``mac``: records are authenticated by a key private to the
  user who wrote them, so that a record planted by another writer of a shared inventory
  is ignored.
The CRL rows of 0002 have neither issuer name nor scope, and issuer keys are now built
from prepared names: the revocation and path caches are emptied (CRLs are fetched or read
again on the next check; until then the policy decides, fail closed by default).

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _crls(scoped: bool) -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer_key", sa.String(length=128), nullable=False),
        sa.Column("crl_number", sa.String(length=42), nullable=True),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=True),
        sa.Column("indexed", sa.Boolean(), nullable=False, server_default=sa.true()),
    ]
    if scoped:
        columns += [
            sa.Column("issuer_name", sa.String(length=64), nullable=False),
            sa.Column("scope", sa.Text(), nullable=False, server_default=""),
        ]
    op.create_table(
        "crls",
        *columns,
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("issuer_key", "scope", "crl_number") if scoped
        else sa.UniqueConstraint("issuer_key", "crl_number"),
    )
    with op.batch_alter_table("crls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_crls_issuer_key"), ["issuer_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_crls_sha256"), ["sha256"], unique=scoped)
        if scoped:
            batch_op.create_index(batch_op.f("ix_crls_issuer_name"), ["issuer_name"])


def _revoked_serials(scoped: bool) -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("crl_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.LargeBinary(), nullable=False),
        sa.Column("revoked_at", sa.String(length=14), nullable=False),
        sa.Column("reason", sa.SmallInteger(), nullable=True),
    ]
    if scoped:
        columns.append(sa.Column("cert_issuer", sa.String(length=64), nullable=True))
    op.create_table(
        "revoked_serials",
        *columns,
        sa.ForeignKeyConstraint(["crl_id"], ["crls.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("revoked_serials", schema=None) as batch_op:
        batch_op.create_index("ix_revoked_crl_serial", ["crl_id", "serial"], unique=False)


def _rebuild(scoped: bool) -> None:
    op.drop_table("revoked_serials")
    op.drop_table("crls")
    _crls(scoped)
    _revoked_serials(scoped)
    op.execute("DELETE FROM validated_paths")


def upgrade() -> None:
    _rebuild(scoped=True)
    with op.batch_alter_table("validated_paths", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    _rebuild(scoped=False)
    with op.batch_alter_table("validated_paths", schema=None) as batch_op:
        batch_op.drop_column("mac")
