"""The image and the ops files, checked by reading them (no Docker engine runs here; the
entrypoint itself is run in test_container_entrypoint.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from reminders.settings import Settings, env_name
from tests.support.image import INITS, ROOT, Image, load

SECRET_NAMES = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|AUTH|PRIVATE", re.IGNORECASE)
RUNTIME_FILES = {"config", "docker/entrypoint.sh"}
SETTINGS = {env_name(field) for field in Settings.model_fields}


@pytest.fixture(scope="module")
def image() -> Image:
    return load()


def _script(path: Path) -> list[str]:
    """The commands of a shell script, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_the_image_is_built_in_stages_on_a_slim_python(image) -> None:
    assert len(image.stages) >= 2
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", s.base) for s in image.stages)
    assert image.stages[0].name != image.final.name


def test_the_build_stage_makes_a_wheel_for_the_service_and_each_dependency(image) -> None:
    build = image.stages[0]
    wheel = [shlex.split(run) for run in build.values("RUN") if "pip wheel" in run]
    assert wheel, "the build stage runs no `pip wheel`"
    assert "--no-deps" not in wheel[0]  # every dependency too: the runtime stage is offline
    assert wheel[0][-1] == "."


def test_the_runtime_stage_installs_the_wheels_offline_from_a_mount(image) -> None:
    installs = [run for run in image.final.values("RUN") if "pip install" in run]
    assert len(installs) == 1
    install = shlex.split(installs[0])
    assert "--no-index" in install
    mount = next(w for w in install if w.startswith("--mount="))
    assert f"from={image.stages[0].name}" in mount  # mounted from the build stage, not copied
    wheels = dict(part.split("=", 1) for part in mount.removeprefix("--mount=").split(","))
    assert f"--find-links={wheels['target']}" in install


def test_the_final_stage_copies_only_runtime_files(image) -> None:
    copies = image.final.copies()
    assert {source for copy in copies for source in copy.sources} <= RUNTIME_FILES
    assert all("from" not in copy.flags for copy in copies)
    assert all(run.find("pip wheel") < 0 for run in image.final.values("RUN"))


def test_the_service_runs_as_a_numeric_user_that_is_not_root(image) -> None:
    user = image.final.last("USER")
    assert user is not None
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes can check runAsNonRoot
    last_user = max(i for i, (name, _) in enumerate(image.final.instructions) if name == "USER")
    assert all(name != "RUN" for name, _ in image.final.instructions[last_user:])


def test_the_health_check_asks_the_service_for_healthz(image) -> None:
    options, command = image.healthcheck
    assert "--interval=" in options and "--timeout=" in options and "--start-period=" in options
    assert command[0] == "python"
    assert "/healthz" in command[-1] and "REMINDERS_HTTP_PORT" in command[-1]


def test_the_entrypoint_is_exec_form_under_an_init_that_passes_signals_on(image) -> None:
    argv = image.entrypoint  # a JSON list: no shell stands between the init and the script
    assert Path(argv[0]).name in INITS
    assert argv[-1] == next(c.dest for c in image.final.copies() if "entrypoint" in c.dest)
    installs_the_init = [run for run in image.final.values("RUN") if Path(argv[0]).name in run]
    assert installs_the_init
    assert image.final.last("STOPSIGNAL") in (None, "SIGTERM")


def test_the_entrypoint_script_migrates_then_becomes_the_service(image) -> None:
    commands = _script(ROOT / "docker" / "entrypoint.sh")
    copy = next(c for c in image.final.copies() if "entrypoint" in c.dest)
    assert copy.flags.get("chmod") == "0755"
    assert commands[0].startswith("set -e") or commands[0].startswith("set -eu")
    assert commands.index("reminders migrate") < commands.index("exec reminders run")
    assert commands[-1] == "exec reminders run"  # exec: SIGTERM reaches the service itself


def test_the_image_bakes_in_no_secret(image) -> None:
    for stage in image.stages:
        names = [name for value in stage.values("ENV") for name in re.findall(r"(\w+)=", value)]
        names += [value.split("=")[0] for value in stage.values("ARG")]
        assert [name for name in names if SECRET_NAMES.search(name)] == []
    for value in image.env.values():
        if "://" in value:
            assert make_url(value).password is None


def test_the_image_listens_where_it_says_it_does(image) -> None:
    assert image.final.last("EXPOSE") == image.env["REMINDERS_HTTP_PORT"]
    assert image.env["REMINDERS_HTTP_HOST"] == "0.0.0.0"
    assert set(image.env) - {"PGCONNECT_TIMEOUT"} - SETTINGS <= {
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "PIP_NO_CACHE_DIR",
        "PIP_ROOT_USER_ACTION",
    }


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = set(_script(ROOT / ".dockerignore"))
    assert {".env", ".git", ".venv", "tests", "*.db"} <= ignored


def test_the_compose_stack_runs_replicas_on_a_healthy_postgres() -> None:
    stack = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service, db = stack["services"]["reminders"], stack["services"]["db"]
    assert db["image"].startswith("postgres:") and "healthcheck" in db
    assert service["depends_on"]["db"]["condition"] == "service_healthy"
    assert service["deploy"]["replicas"] >= 2
    environment = service["environment"]
    assert set(environment) <= SETTINGS  # no misspelt variable that would be silently ignored
    assert make_url(environment["REMINDERS_DATABASE_URL"]).host == "db"
    assert int(service["stop_grace_period"].rstrip("s")) >= 10


def test_the_readme_names_every_environment_variable_an_operator_can_set() -> None:
    readme = (ROOT / "README.md").read_text()
    assert sorted(name for name in SETTINGS if f"`{name}`" not in readme) == []
