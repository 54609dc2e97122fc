"""Pure builders of everything infra sends to a host: engine operations, shell commands, Celery probes.

Nothing here acts; nothing outside this package spells a docker command line.
"""
