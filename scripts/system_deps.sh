#!/usr/bin/env bash
# System programs the test suite drives for real: nginx (docker/nginx.conf is
# checked with `nginx -t` and run), chromium (browser tests), gettext's msgfmt
# (the compiled Polish catalogue must match its source), coturn's turnserver
# (media relayed with the hub's TURN credentials, tests/test_turn.py). Redis and
# PostgreSQL are handled by scripts/test_services.py.
# As root with apt-get, missing ones are installed; otherwise this says what to
# install and the tests that need them fail with the same message.
set -u
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v msgfmt >/dev/null 2>&1 || missing+=(gettext)
command -v turnserver >/dev/null 2>&1 || [ -x /usr/bin/turnserver ] || missing+=(coturn)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "system deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own turnserver on 127.0.0.1. Debian's coturn.service
  # would start one on every interface with the stock /etc/turnserver.conf
  # (which sets no credentials): masked before the package can start it.
  if [[ " ${missing[*]} " == *" coturn "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl mask coturn.service >/dev/null 2>&1 || true
  fi
  apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null \
    || echo "system deps: could not install ${missing[*]}; the tests that need them will fail"
else
  echo "system deps: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})"
fi
exit 0
