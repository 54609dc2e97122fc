"""infra: turn machines you can SSH into into a Celery cluster with one command."""

__version__ = "0.1.0"
