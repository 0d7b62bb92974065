"""Adopting transcache on a machine: `install` / `uninstall` (installer.py, from plans that
apply.py applies and undoes exactly), `status`, `env` and `doctor`. One module per
service manager (systemd.py, launchd.py) and per trust store (trust_*.py), each with its
check, its install steps and their undo; every command goes through a runner (runner.py)."""
