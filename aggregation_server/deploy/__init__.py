"""Production deployment files: the gunicorn settings (`gunicorn_conf`)."""
