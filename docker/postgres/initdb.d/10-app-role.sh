#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised: the application's
# role owns its database and nothing else (no superuser, no CREATEDB, no CREATEROLE).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v app_password="$APP_DB_PASSWORD" <<'SQL'
CREATE ROLE die_hard LOGIN PASSWORD :'app_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE die_hard OWNER die_hard;
REVOKE ALL ON DATABASE die_hard FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
SQL
