"""infra_runtime.boot: secrets from a file into a process's environment, and Celery's TLS default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(code: str, env: dict[str, str]) -> dict:
    """Python started as in the images: the boot module runs first (infra-boot.pth does this there)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "INFRA_"))}
    out = subprocess.run([sys.executable, "-c", "import infra.runtime.boot\n" + code],
                         env={**clean, **env}, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout)


def test_the_env_file_becomes_the_environment_and_a_variable_already_set_wins(tmp_path):
    env_file = tmp_path / "celery.env"
    env_file.write_text("CELERY_BROKER_URL=amqps://worker:pw@m:5671/lab\nA=x=y z\n# comment\n\nB=1\n")
    env_file.chmod(0o400)
    seen = run("import json, os; print(json.dumps({k: os.environ.get(k) for k in ('CELERY_BROKER_URL', 'A', 'B')}))",
               {"INFRA_ENV_FILE": str(env_file), "B": "kept"})
    assert seen == {"CELERY_BROKER_URL": "amqps://worker:pw@m:5671/lab", "A": "x=y z", "B": "kept"}


def test_the_ca_file_becomes_celerys_default_broker_tls_without_importing_celery_at_start(tmp_path):
    code = ("import json, sys\n"
            "imported = 'celery' in sys.modules\n"
            "from celery import Celery\n"
            "app = Celery('t', broker='amqps://u:p@h:5671/x')\n"
            "ssl_ = app.conf.broker_use_ssl\n"
            "print(json.dumps({'imported_at_start': imported, 'ca': ssl_['ca_certs'],\n"
            "                  'reqs': int(ssl_['cert_reqs']), 'sni': ssl_['server_hostname']}))")
    seen = run(code, {"INFRA_ENV_FILE": "/nonexistent", "INFRA_CA_FILE": "/run/infra/ca.crt"})
    assert seen == {"imported_at_start": False, "ca": "/run/infra/ca.crt", "reqs": 2, "sni": None}


def test_a_projects_own_broker_use_ssl_wins_over_the_default():
    code = ("import json\nfrom celery import Celery\n"
            "app = Celery('t')\napp.conf.broker_use_ssl = {'ca_certs': '/mine'}\n"
            "print(json.dumps(app.conf.broker_use_ssl))")
    assert run(code, {"INFRA_ENV_FILE": "/nonexistent", "INFRA_CA_FILE": "/run/infra/ca.crt"}) == {"ca_certs": "/mine"}


def test_without_a_ca_file_celery_keeps_its_own_default():
    code = "import json\nfrom celery import Celery\nprint(json.dumps(Celery('t').conf.broker_use_ssl))"
    assert run(code, {}) is False


def test_the_pth_line_imports_boot_only_when_infra_set_the_env_file():
    line = (REPO / "templates" / "infra-boot.pth").read_text().strip()
    assert line.startswith("import ") and "INFRA_ENV_FILE" in line and "infra_runtime.boot" in line
