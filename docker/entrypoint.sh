#!/bin/sh
# The container's entrypoint: upgrade the schema (replicas take turns on a PostgreSQL advisory
# lock, so starting several at once is safe), then become the service so signals reach it.
set -eu
reminders migrate
exec reminders run "$@"
