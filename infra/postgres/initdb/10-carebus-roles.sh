#!/bin/sh
# Runs once, on an empty data volume, as the superuser (the postgres image's entrypoint runs
# /docker-entrypoint-initdb.d): the database owner `carebus`, the database, and for each service
# the NOLOGIN group role migration 0011 grants (created here, so the owner needs no CREATEROLE)
# and its login role with the password of its file secret. On an existing volume run the same
# statements by hand (docs/operations.md, "Database roles").
set -eu

services="gateway registry audit inbox adapters event_store sla audit_store webhooks alert_store operator"

# psql variables, so each password is quoted by psql (:'name') and never part of a command line.
set -- -v ON_ERROR_STOP=1 -v owner_password="$(cat /run/secrets/carebus_postgres_password)"
for service in $services; do
    set -- "$@" -v "${service}_password=$(cat "/run/secrets/postgres_${service}_password")"
done

{
    echo "CREATE ROLE carebus LOGIN PASSWORD :'owner_password';"
    echo "CREATE DATABASE carebus OWNER carebus;"
    # The router keeps its state in Kafka: a group role for 0011, no login role.
    echo "CREATE ROLE carebus_svc_router NOLOGIN;"
    for service in $services; do
        echo "CREATE ROLE carebus_svc_${service} NOLOGIN;"
        echo "CREATE ROLE carebus_${service} LOGIN PASSWORD :'${service}_password'" \
             "IN ROLE carebus_svc_${service};"
    done
} | psql "$@" --username postgres --dbname postgres --no-password --quiet
