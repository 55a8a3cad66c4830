"""The config nonstop runs with when given none (no -c, no $NONSTOP_CONF): RTMP on 1935, the HTTP API on
1985 and HTTP-FLV on 8080, like SRS's conf/srs.conf, but logging to the console and not daemonizing.
"""

DEFAULT_CONFIG_TEXT = """\
# nonstop's embedded default config, in SRS's syntax (an SRS srs.conf works too).
# Copy it to a file, edit it, and check the copy with `nonstop -t -c FILE`.

# RTMP: publish and play on rtmp://HOST/APP/STREAM.
listen              1935;
# All TCP connections together (RTMP, HTTP-FLV, API); the excess is closed at accept.
max_connections     1000;
# Stay in the foreground: containers and systemd (Type=notify) supervise the process.
daemon              off;
# Log to stdout/stderr, for docker logs and journald.
srs_log_tank        console;

# The JSON API (/api/v1/...), /metrics and the health checks.
http_api {
    enabled         on;
    listen          1985;
}

# HTTP-FLV (and the static files of dir).
http_server {
    enabled         on;
    listen          8080;
}

# __defaultVhost__ serves every host name.
vhost __defaultVhost__ {
    # HTTP-FLV at http://HOST:8080/APP/STREAM.flv
    http_remux {
        enabled     on;
        mount       [vhost]/[app]/[stream].flv;
    }
}
"""
