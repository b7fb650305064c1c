"""I/O path benchmarks: ``hvkvm bench``. Each prints a table and writes JSON.

Speed is measured here, never asserted in tests. Results are compared as ratios within one run
(these machines are shared and noisy), and every report describes the machine it ran on.
"""
