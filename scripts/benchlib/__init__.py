"""The benchmark suites behind ``scripts/bench.py`` (the entry point and its CLI).

``harness`` is what every suite shares (``@suite``, ``measure``, the table); each
other module is one suite (``channels``, ``io``, ``daemon``), registered in
``harness.SUITES`` when imported; ``machine`` is the machine line. The layout of a
suite and how a workload is measured are in ``scripts/bench.py``'s docstring.
"""
