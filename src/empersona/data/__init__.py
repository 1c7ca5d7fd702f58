"""Data stage: the public sources the study uses, their cache, parsers and training domains.

- ``sources``: the table of files (upstream URL pinned to a commit, sha256, licence).
- ``fetch``: download or copy from a mirror folder into the cache, verifying every sha256.
- ``parsers``: readers for each evaluation file format, with errors that name file and line.
- ``domains``: the fine-tuning domains and their aligned controls, loading and validation.
- ``commands``: the ``empersona data`` sub-commands.
"""
