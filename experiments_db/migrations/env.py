"""Alembic environment of the evidence store.

Normally run through :func:`rankscope.experiments_db.upgrade_database`, which passes an open connection in
``config.attributes["connection"]``; with ``sqlalchemy.url`` set it opens its own engine.
"""

from alembic import context
from sqlalchemy.engine import Connection

from rankscope.experiments_db.engine import create_db_engine
from rankscope.experiments_db.migrate import include_name
from rankscope.experiments_db.models import metadata

config = context.config


def _configure(
    *,
    render_as_batch: bool,
    connection: Connection | None = None,
    url: str | None = None,
    literal_binds: bool = False,
) -> None:
    context.configure(
        connection=connection,
        url=url,
        literal_binds=literal_binds,
        render_as_batch=render_as_batch,
        target_metadata=metadata,
        include_name=include_name,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    _configure(url=url, literal_binds=True, render_as_batch=bool(url and url.startswith("sqlite")))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_db_engine(config.get_main_option("sqlalchemy.url"), upgrade=False)
    try:
        with engine.connect() as conn:
            _configure(connection=conn, render_as_batch=conn.dialect.name == "sqlite")
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
