#!/bin/sh
# The official MariaDB image's `healthcheck.sh --connect --innodb_initialized`, as compose.yaml calls
# it: healthy once the server accepts a login over TCP and InnoDB answers a query.
exec mariadb --protocol=tcp --host=127.0.0.1 --user=root --password="${MARIADB_ROOT_PASSWORD}" \
  --execute="SELECT 1 FROM information_schema.ENGINES WHERE ENGINE = 'InnoDB'" >/dev/null
