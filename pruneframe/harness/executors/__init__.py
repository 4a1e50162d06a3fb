"""Where a comparison's runs are computed: in this process (``local``), as Slurm jobs (``submitit``) or as Ray tasks (``ray``).

``local`` is :func:`pruneframe.harness.runner.compare` itself. The others send the dense evaluation, then
every pending (method, budget, seed) cell, to an engine as one job each (:mod:`.job`); every job writes
its records into the shared ``runs/`` folder under the same cache keys as a local run, and the driver
(:mod:`.driver`) writes the report from them. The engines are optional extras, imported only by their
own module (:mod:`.submitit_executor`, :mod:`.ray_executor`); :mod:`.options` holds their settings.
"""
