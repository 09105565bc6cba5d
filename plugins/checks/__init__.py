"""Built-in gate checks, one module each, registered through ``register_checks`` like any user check.

What every check builds on (``BaseCheck``, ``fmt``, ``need_run``) lives in ``harness.checks``, where external
check authors import it from too; ``_stats`` holds the statistics the built-ins share.
"""
