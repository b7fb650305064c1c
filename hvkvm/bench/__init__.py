"""I/O path benchmarks: ``hvkvm bench {exits,vmbus,storage,net,boot,ceilings,all}``, ``compare``
and ``plot``. Each suite prints a table and writes JSON with every sample and the machine.

Speed is measured here, never asserted in tests. Results are compared as ratios within one run
(these machines are shared and noisy), and every report describes the machine it ran on. The
method and a real run are in BENCHMARKS.md at the top of the repository.

Modules: :mod:`.common` (machine, progress, summaries, measures, CPU time), :mod:`.report`
(running suites into one document, the goals, compare, plot), :mod:`.qemu` (the pinned peer),
:mod:`.kvmstats` (KVM's binary stats fd), :mod:`.native` (the bench's C, csrc/bench_*.c), and one
module per suite.
"""
