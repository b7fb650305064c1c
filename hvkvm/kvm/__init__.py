"""Self-written ctypes bindings for Linux KVM, in the style of rust-vmm's kvm-ioctls.

One module per fd type (:mod:`.system` for ``/dev/kvm``, :mod:`.vm`, :mod:`.vcpu`), one method per
ioctl named after it, structures in the kernel's spelling (:mod:`.abi`), and one errno choke point
(:mod:`._ioctl`) raising :class:`KvmError` naming the ioctl.
"""

from .errors import KvmError
from .system import Kvm

__all__ = ["Kvm", "KvmError"]
