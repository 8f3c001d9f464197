"""SQL stores over SQLAlchemy Core: SQLite, PostgreSQL (psycopg 3), MySQL/MariaDB/SingleStore (PyMySQL), one code path.

URLs: ``sqlite:///rel.db``, ``sqlite:////abs.db``, ``sqlite:///:memory:``, a bare ``*.db`` path;
``postgresql://``, ``postgres://``, ``postgresql+psycopg://``, ``postgresql+psycopg2://``;
``mysql://``, ``mysql+pymysql://``, ``mariadb://``, ``mariadb+pymysql://``; ``singlestoredb://``, ``singlestore://``
(SingleStore on the MySQL drivers, with tables of its own: see ``schema.py``).
Other query parameters go to the driver, as with SQLAlchemy, when the driver takes them: libpq connection parameters
for PostgreSQL (``sslmode``, ``application_name``, ``options``, ``host`` repeated for several hosts, ...), PyMySQL
connection arguments for MySQL (``ssl_ca``, ``init_command``, ...). Anything else (a typo, or another backend's
option such as ``ttl`` or ``prefix``) is a ConfigError naming the valid options: SQLAlchemy would only fail at the
first connection, with the driver's message. SQLite URLs take no driver parameters, host or credentials.

Options: ``table_prefix`` (default ``praison_``), ``pool_size``, ``max_overflow``, ``pool_recycle`` (seconds),
``connect_timeout`` (seconds, default 10: reaching the server and its handshake), ``read_timeout`` (seconds, default
30: the longest wait for any answer from the server; past it the connection is dropped and the call raises
StoreUnavailable, so a frozen or silent server never hangs a caller), ``auto_upgrade`` (apply pending schema
migrations on open; default true), ``echo``. ``read_timeout`` is enforced by the client (PyMySQL socket timeouts,
psycopg 3 waits), so it also holds when the server is stopped mid-call and cannot cancel anything itself.

MySQL/MariaDB: sessions run in strict SQL mode (``STRICT_ALL_TABLES``: the server refuses a value it would
otherwise truncate) with ``innodb_lock_wait_timeout`` below ``read_timeout``; deadlocks and lock-wait timeouts are
retried with bounded backoff in every write transaction; a statement larger than the server's
``max_allowed_packet`` (read once per connection) is refused with InputError before it is sent.

Guarantees: every append is one transaction that bumps the session's counter row (a row lock on PostgreSQL and
MySQL, ``BEGIN IMMEDIATE`` on SQLite) and inserts the messages, so seqs are unique and gap-free across processes;
``updated_at`` and ``message_count`` change in that same transaction. Reads of the newest N messages are an index
range scan on the primary key (session_id, seq). The schema version lives in ``<prefix>schema_version``.

Modules: ``engine`` (URL checks, options, engine creation, connection hooks, error classification, retries, dialect
quirks), ``schema`` (tables and migrations), ``database`` (SqlDatabase, ``migrate``, ``schema_version``),
``stores`` (the two stores and their row mapping).
"""

from .database import SqlDatabase, migrate, schema_version
from .schema import MIGRATIONS, Migration, Tables, build_tables
from .stores import SqlConversationStore, SqlStateStore

__all__ = [
    "SqlConversationStore",
    "SqlStateStore",
    "SqlDatabase",
    "migrate",
    "schema_version",
    "MIGRATIONS",
    "Migration",
    "Tables",
    "build_tables",
]
