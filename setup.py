"""Packaging glue that pyproject.toml cannot say.

The wheel must hold everything the installed service reads, so that the container (which has
no checkout) can migrate and start:

- the top-level ``alembic/`` and ``config/`` folders, every subfolder included, ship as the
  packages ``reminders._alembic`` and ``reminders._config`` (``alembic/`` has no
  ``__init__.py`` on purpose: it must never shadow the alembic library);
- every file under ``reminders/``, Python or not (``py.typed``, web templates, static files).

Folders are found by walking, so a new file or folder ships without editing this file.
"""

from setuptools import find_namespace_packages, setup

SHIPPED = {"alembic": "reminders._alembic", "config": "reminders._config"}
NOT_CODE = ["*__pycache__*"]


def _shipped(top: str, package: str) -> dict[str, str]:
    """``{package name: folder}`` for ``top`` and each folder below it."""
    found = {package: top}
    for name in find_namespace_packages(where=top, exclude=NOT_CODE):
        found[f"{package}.{name}"] = f"{top}/{name.replace('.', '/')}"
    return found


EXTRA = {name: path for top, pkg in SHIPPED.items() for name, path in _shipped(top, pkg).items()}
setup(
    packages=find_namespace_packages(include=["reminders", "reminders.*"], exclude=NOT_CODE)
    + list(EXTRA),
    package_dir=EXTRA,
    package_data={"": ["*"]},
)
