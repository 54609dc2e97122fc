"""Facts about hosts: each fact is a command (built in `infra.commands`) and a pure parser of its output."""
