"""Packaging glue that pyproject.toml cannot say: ship the top-level ``alembic/`` and
``config/`` folders inside the wheel as ``reminders/_alembic`` and ``reminders/_config``, so an
installed service can migrate and start without a checkout. (``alembic/`` has no
``__init__.py`` on purpose: it must never shadow the alembic library.)"""

from setuptools import find_packages, setup

EXTRA = {
    "reminders._alembic": "alembic",
    "reminders._alembic.versions": "alembic/versions",
    "reminders._config": "config",
    "reminders._config.templates": "config/templates",
}

setup(packages=find_packages(include=["reminders", "reminders.*"]) + list(EXTRA), package_dir=EXTRA)
