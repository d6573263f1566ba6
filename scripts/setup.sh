#!/usr/bin/env bash
# Make .venv with s4 installed (editable) and its test extras. Idempotent; safe to rerun.
# Installs the few Debian packages it needs when run as root on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: s4 needs Python 3.11+, $PY is $("$PY" --version 2>&1)" >&2; exit 1; }

missing=()
"$PY" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v ip >/dev/null || missing+=(iproute2)      # multi-host test: ip netns
command -v bash >/dev/null || missing+=(bash)
if ((${#missing[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: apt-get install ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# compat mode: a plain .pth path entry, not an import hook that costs ~20 ms at every start
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" --config-settings editable_mode=compat
# setuptools is only a build tool here (pip builds s4 in an isolated environment of its own),
# but the distutils-precedence.pth it puts in the venv runs at every interpreter start: ~1 ms of
# a ~30 ms small cp here (interleaved against a venv that has it). Python 3.12's venvs no longer
# include it; this one drops it.
if .venv/bin/python -m pip show -q setuptools >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -q -y --disable-pip-version-check setuptools
fi
# byte-compile now: with PYTHONDONTWRITEBYTECODE set (it is on some machines) every s4ctl
# run would otherwise recompile its modules, ~20 ms of a small cp
.venv/bin/python -m compileall -q s4d s4ctl
echo "setup: ready: $(.venv/bin/s4d --version), $(.venv/bin/s4ctl --version) in .venv/bin" >&2
