"""Run by every Python process of the cluster's images when infra set INFRA_ENV_FILE (infra-boot.pth).

infra gives containers their secrets as files, never as environment a `docker inspect` would show:
- INFRA_ENV_FILE names a file of KEY=value lines (CELERY_BROKER_URL, CELERY_RESULT_BACKEND, ...)
  that becomes this process's environment; a variable already set keeps its value. Celery and
  the project's own code read them from the environment as before.
- INFRA_CA_FILE (workers, when the cluster uses TLS) makes the cluster CA the only one Celery's
  TLS connections to the broker trust, and checks the broker's name against its certificate.
  Set as Celery's default for `broker_use_ssl`, so a project that sets its own keeps it. Celery
  is not imported for this: the default is set when Celery itself loads its defaults.

Standard library only, and nothing is done at all for processes without INFRA_ENV_FILE.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import ssl
import sys

_DEFAULTS_MODULE = "celery.app.defaults"


def load_env_file(path: str) -> None:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        print(f"infra: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and not key.startswith("#"):
            os.environ.setdefault(key, value)


def broker_tls(ca_file: str) -> dict:
    # server_hostname None: kombu puts the broker's host name there, so the name is checked too.
    return {"ca_certs": ca_file, "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}


def set_celery_defaults(module, ca_file: str) -> None:
    module.DEFAULTS["broker_use_ssl"] = broker_tls(ca_file)
    module._OLD_DEFAULTS["BROKER_USE_SSL"] = broker_tls(ca_file)  # projects with old setting names


class _CeleryDefaultsHook(importlib.abc.MetaPathFinder):
    """Sets Celery's defaults right after `celery.app.defaults` is executed, once."""

    def __init__(self, ca_file: str) -> None:
        self.ca_file = ca_file

    def find_spec(self, name, path, target=None):
        if name != _DEFAULTS_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, ca_file = spec.loader, self.ca_file

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                set_celery_defaults(module, ca_file)

        spec.loader = Loader()
        return spec


def boot() -> None:
    env_file = os.environ.get("INFRA_ENV_FILE")
    if env_file:
        load_env_file(env_file)
    ca_file = os.environ.get("INFRA_CA_FILE")
    if ca_file:
        if _DEFAULTS_MODULE in sys.modules:
            set_celery_defaults(sys.modules[_DEFAULTS_MODULE], ca_file)
        else:
            sys.meta_path.insert(0, _CeleryDefaultsHook(ca_file))


boot()
