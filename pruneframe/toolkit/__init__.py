"""What method authors build with: gates, input statistics, losses, layer-streamed and recomputed passes,
memory tracking, resumable loops and ``torchrun`` sharding. None of it is a stage; methods call it."""
