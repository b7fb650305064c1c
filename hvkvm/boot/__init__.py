"""Booting a child partition: loading ELF/PVH images and the initial CPU state."""
