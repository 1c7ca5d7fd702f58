"""empersona: reproduce and extend studies of the emergent-misalignment persona.

Pipeline stages, one subpackage each: data -> train -> evals -> analysis -> report,
with ``study`` tying them together from one YAML file.
"""

__version__ = "0.1.0"
