"""The job schema: one module per section of a job file, and the job that composes them.

A job file is YAML. It is validated in full before any stage does work, and every error names the
file and the dotted key at fault, so a typo in a job that would run for a day fails in the first
second. (The checks that need the stage registry or the filesystem are the stages' `check` and
miniplm/job.py.)

A key that changes how work runs but never what it writes is marked `execution_only` where it is
declared: changing it leaves finished work valid (schema/hashing.py leaves it out).

The package imports nothing else of miniplm, so that every layer may use it.
"""
