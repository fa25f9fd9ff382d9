"""Alembic environment: idm always passes an open connection (see inventory.store)."""

from alembic import context

from idm.identity.inventory.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
