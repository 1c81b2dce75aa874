#!/usr/bin/env bash
# Prints an nginx config: one worker, no access log, `return 200` with the byte-identical
# body leftpad gives for /v1/leftpad/?str=test&len=50&chr=*, on 127.0.0.1:PORT.
#   scripts/nginx-floor.sh PORT PREFIX_DIR > nginx.conf
set -euo pipefail
port=$1 prefix=$2
body='{"str":"**********************************************test"}'
cat <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
# Room for the idle-connection and sweep scripts' 15,000 connections (fd limit 20,000).
worker_rlimit_nofile 20000;
events { worker_connections 19000; }
http {
  access_log off;
  keepalive_requests 1000000000;
  client_body_temp_path $prefix;
  proxy_temp_path $prefix;
  fastcgi_temp_path $prefix;
  uwsgi_temp_path $prefix;
  scgi_temp_path $prefix;
  server {
    listen 127.0.0.1:$port reuseport;
    location / {
      default_type "application/json; charset=utf-8";
      return 200 '$body\n';
    }
  }
}
CONF
