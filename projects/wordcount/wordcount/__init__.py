"""Word count as a Celery map/reduce: `celery -A wordcount worker` runs the tasks,
`python -m wordcount.client` submits a text and prints the result."""

from .celery_app import app

__all__ = ["app"]
