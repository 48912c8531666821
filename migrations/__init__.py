"""Alembic migrations of the facesearch metadata store (installed as ``facesearch._migrations``)."""
