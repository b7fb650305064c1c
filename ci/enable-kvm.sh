#!/usr/bin/env bash
# Make /dev/kvm usable for the CI user and install what hvkvm needs (Debian/Ubuntu runners).
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends gcc binutils linux-libc-dev qemu-system-x86
if [ ! -e /dev/kvm ]; then
    echo "no /dev/kvm on this runner: pick one with nested virtualization" >&2
    exit 1
fi
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"' |
        $SUDO tee /etc/udev/rules.d/99-kvm4all.rules >/dev/null
    $SUDO udevadm control --reload-rules
    $SUDO udevadm trigger --name-match=kvm
fi
