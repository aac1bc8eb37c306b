"""Ground floor: what every stage shares and nothing of the project below it.

``config`` (frozen dataclasses, one per concern, and every option's range),
``errors`` (the user-error classes and the one-line message rule), ``files``
(atomic writes, the folder lock), ``env`` (CPU, PIL, the environment record).
May import: ``model`` (its tables) and the standard library, nothing else of ``pipeline``.
"""
