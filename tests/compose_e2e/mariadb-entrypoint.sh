#!/bin/sh
# What the official MariaDB image's entrypoint does for the compose stack: on a data directory without
# the database, create it and its user from MARIADB_DATABASE / MARIADB_USER / MARIADB_PASSWORD and set
# the root password; then run the server on the network. (Debian's package leaves system tables in
# /var/lib/mysql, so the database's own directory tells whether this ran.)
set -eu
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if [ ! -d "/var/lib/mysql/${MARIADB_DATABASE}" ]; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
  mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
  init_pid=$!
  until mariadb-admin --socket=/run/mysqld/init.sock ping --silent 2>/dev/null; do
    kill -0 "$init_pid"  # stop waiting if the server died
    sleep 0.2
  done
  mariadb --socket=/run/mysqld/init.sock <<SQL
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('${MARIADB_ROOT_PASSWORD}') OR unix_socket;
CREATE DATABASE IF NOT EXISTS \`${MARIADB_DATABASE}\` CHARACTER SET utf8mb4;
CREATE USER '${MARIADB_USER}'@'%' IDENTIFIED BY '${MARIADB_PASSWORD}';
GRANT ALL ON \`${MARIADB_DATABASE}\`.* TO '${MARIADB_USER}'@'%';
SQL
  mariadb-admin --socket=/run/mysqld/init.sock -uroot -p"${MARIADB_ROOT_PASSWORD}" shutdown
  wait "$init_pid" || true
fi
exec mariadbd --user=mysql --bind-address=0.0.0.0 "$@"
