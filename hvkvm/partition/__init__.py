"""Child partitions: the settings a VM Worker holds, the partition that owns a VM, and its exit loop."""
