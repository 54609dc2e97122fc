"""`hosts`: the machines infra reaches over SSH."""

from __future__ import annotations

from pydantic import Field, field_validator

from .model import StrictModel
from .values import checked, host_address_problem, path_problem, ssh_user_problem


class HostConfig(StrictModel):
    """A machine reachable over SSH. Unset fields fall back to ~/.ssh/config, then SSH defaults."""

    address: str = Field(
        min_length=1, description="IP address or host name to connect to; an alias from ~/.ssh/config works too.")
    user: str | None = Field(
        default=None, description="SSH user; default: ~/.ssh/config, else your local user name.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="SSH port; default: ~/.ssh/config, else 22.")
    key: str | None = Field(
        default=None,
        description="Private key file (must exist), relative to the cluster file or absolute; "
                    "default: ~/.ssh/config, then ssh-agent.")

    @field_validator("address")
    @classmethod
    def _address_valid(cls, address: str) -> str:
        return checked(address, host_address_problem, "a host name or an IP address")

    @field_validator("user")
    @classmethod
    def _user_valid(cls, user: str | None) -> str | None:
        return checked(user, ssh_user_problem, "a valid user name")

    @field_validator("key")
    @classmethod
    def _key_valid(cls, key: str | None) -> str | None:
        return checked(key, path_problem, "a usable key file path")
