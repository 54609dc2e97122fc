"""What infra keeps on this machine: the manifest, secrets, the CA, the lock, volunteers, digests."""
