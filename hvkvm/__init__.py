"""hvkvm: the Hyper-V architecture rebuilt on Linux KVM, with Python as the parent partition.

The parent partition (this package) creates child partitions (KVM VMs) through its own ctypes
bindings (:mod:`hvkvm.kvm`), services their exits, and hosts the device providers (VSPs) that
paravirtual drivers (VSCs) in tiny guest kernels talk to.
"""

__version__ = "0.1.0"
