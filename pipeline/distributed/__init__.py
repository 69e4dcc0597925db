"""The Ray execution layer: thin actor shells over the single-process pipeline.

- :mod:`.session` — joining or starting a Ray instance (local: dashboard off, loopback only).
- :mod:`.evaluators` — energy-evaluator actors and the pool that batches requests to them.
- :mod:`.bias_server` — the actor that owns V(s), and the client a trainer deposits through.
- :mod:`.executor` — runs a campaign's runs concurrently in trainer actors.

Only this package imports ``ray``.  Everything here delegates to :mod:`pipeline.runner`,
so a run gives the same numbers under ``--executor inline`` and ``--executor ray``.
"""
