"""The marks of a test that runs real QEMU as the peer (shared by the virtio-blk and virtio-net
tests): the ``qemu`` marker, skipped without QEMU or a usable /dev/kvm."""

from __future__ import annotations

import os
import shutil

import pytest

#: The QEMU binary (None: not installed).
QEMU = shutil.which("qemu-system-x86_64")


def qemu_test(fn):
    """Marks of a QEMU test: ``qemu``, and skipped without QEMU or a usable /dev/kvm."""
    fn = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                            reason="/dev/kvm is not usable (QEMU's peer runs with KVM)")(fn)
    fn = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                                                 "(Debian: apt-get install qemu-system-x86)")(fn)
    return pytest.mark.qemu(fn)
