#!/bin/sh
# The container's entrypoint (tini runs it as PID 1's only child).
#
# With no arguments: upgrade the schema, then become the service. `reminders migrate` waits for
# the database to come up, and replicas that start at once take turns on a PostgreSQL advisory
# lock, so only the first one changes anything. `exec` makes `reminders run` this very process,
# so SIGTERM from `docker stop` reaches it directly.
#
# With arguments, run them instead (e.g. `reminders check-config`, `reminders import ...`).
set -eu

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

reminders migrate
exec reminders run
