"""Output recognition (PROTOCOLS.md 3.4): the module moved into this folder as ``foils``; the names
it defines are importable from here as before."""

from empersona.evals.output_recognition.foils import *  # noqa: F401,F403
