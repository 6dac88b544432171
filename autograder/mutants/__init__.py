"""Known mistakes: realistic wrong implementations of the contract functions.

One module per assignment, named by its id, with a ``MUTANTS`` tuple of
``autograder.kit.battery.Mutant``. The battery of that assignment lists them, and
``autograder.kit.battery.diagnose`` names the mistake of the first one whose results a
failing submission reproduces. The order of ``MUTANTS`` is the order in which they
are tried.
"""
