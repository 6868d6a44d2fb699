#!/usr/bin/env bash
# The two set-up commands of the README, on a fresh Debian machine:
#   ./dev.sh demo          a self-contained demonstration server in a temporary folder
#   ./dev.sh test [ARGS]   the test suite (ARGS go to pytest)
# Both install what they need first: Debian packages with apt-get, Python packages into .venv.
set -euo pipefail
cd "$(dirname "$0")"

DEBIAN_PACKAGES=(restic rclone runit openssh-server openssh-client rsync python3-venv prometheus chromium)

install_debian_packages() {
    local missing=()
    for package in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "Installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python_packages() {
    local stamp=.venv/.installed
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "Installing Python packages into .venv" >&2
        .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
        touch "$stamp"
    fi
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
    demo)
        install_debian_packages
        install_python_packages
        exec .venv/bin/triplicate demo "$@"
        ;;
    test)
        install_debian_packages
        install_python_packages
        # The lint and type gate first (configured in pyproject.toml): a failure stops here.
        .venv/bin/ruff check .
        .venv/bin/mypy
        exec .venv/bin/python -m pytest -n 2 "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo | ./dev.sh test [pytest arguments]" >&2
        exit 2
        ;;
esac
