#!/bin/sh
# Installs the agent -- spotguard and its runtime dependencies, no extras -- from a directory of
# wheels into a new virtualenv, offline. The Dockerfile's final stage runs this file, and so does
# tests/deploy/test_image_recipe.py (from `make setup`'s wheelhouse), so the two cannot drift.
#
# usage: install.sh WHEEL_DIR VENV
#   PYTHON            interpreter that creates the virtualenv (default: python3)
#   SPOTGUARD_VERSION if set, the installed agent must report exactly this version (the image's
#                     org.opencontainers.image.version label), or the install fails
#
# Bytecode is kept on purpose: pip compiles every module while installing, and the image must ship
# those .pyc files (docs/footprint.md, "Container resources": without them each start compiles
# ~1,340 modules, 5.8 s of CPU and a 124 MiB peak, and a read-only root cannot cache them).
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 WHEEL_DIR VENV" >&2
    exit 64
fi
wheels=$1
venv=$2

"${PYTHON:-python3}" -m venv "$venv"
# No index, no pip configuration, no cache: only the wheels given can be installed, and nothing
# is left behind outside the virtualenv.
PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip install \
    --no-index --find-links "$wheels" --no-cache-dir --disable-pip-version-check --quiet \
    spotguard
# The agent does not need pip or setuptools at run time: one less thing to patch in the image.
"$venv/bin/python" -m pip uninstall --yes --quiet pip setuptools

installed=$("$venv/bin/spotguard" --version)
if [ -n "${SPOTGUARD_VERSION:-}" ] && [ "$installed" != "spotguard $SPOTGUARD_VERSION" ]; then
    echo "install.sh: installed '$installed', expected version '$SPOTGUARD_VERSION'" >&2
    exit 1
fi
echo "install.sh: $installed in $venv"
