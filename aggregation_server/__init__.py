"""The aggregation server: federated rounds, privacy accounting, the global model over HTTP.

Development: `python -m aggregation_server --data-dir DIR [--db URL] [--host H --port P]
[--config FILE] [--init-model CHECKPOINT --tokenizer tokenizer.json] [--admin-token T]`.
Production: gunicorn with `aggregation_server.app:create_app()` (see `aggregation_server.app`).
"""
