"""The sections of ``benchmarks/bench_speed.py`` (``make bench-speed``), one module each:
``embed_throughput`` (a), ``scale`` (b), ``gpu`` (c), ``workers`` (d), ``small_folders`` (e).
Shared: ``folders`` (the image folders), ``runs`` (a timed run, the models, ABBA order),
``reference`` (the plain pipeline), ``ours`` (the project's embed path, timed by its progress
events), ``compare`` (both side by side), ``gpu_sampler`` (nvidia-smi utilisation).
"""
