"""Device providers (VSPs): control plane in Python, data planes in C.

Legacy devices (the 16550A UART in :mod:`hvkvm.vsp.serial`) answer port-I/O and MMIO exits
through the partition's buses; synthetic devices (storage, network, integration services) talk to
their guest drivers (VSCs) over VMBus, with their steady-state data planes running as C threads.
"""
