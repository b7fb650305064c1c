"""VMBus: Linux-wire-compatible channel messages, GPADLs, channels and rings (the parent side)."""
