"""servicerouter benchmarks: ``python -m benchmarks`` (``make bench``) runs them all and prints
one table per benchmark; results are recorded in ``docs/benchmarks.md``.

Modules: ``runtime`` (Runtime API client throughput), ``scale`` (1,000/10,000 apps),
``convergence`` (event -> HAProxy ready), ``reloads`` (reloads per 1,000 replacements),
``zeroloss`` (failed requests under churn). Each exposes ``run(ctx) -> list[Table]``.
"""
