"""The layer that acts on hosts: SSH and local connections, many hosts at once, host keys, forwards."""
