"""Operations: the MLflow tracking server launcher (SQLite locally, PostgreSQL + S3 in production)."""
