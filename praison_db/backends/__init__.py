"""Store implementations, one module per backend family. Import them through :mod:`praison_db.registry`."""
