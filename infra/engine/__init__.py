"""The Docker engine of each host, driven through the Docker SDK over the host's connection."""
