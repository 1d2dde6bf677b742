"""The model stage: a numpy reference forward pass over weights read lazily from disk.

* ``forward``: Grok-1's forward pass, over any loader with the ``Weights``
  interface (imports nothing from grokfetch).
* ``weights``: that loader, for an original checkpoint, a per-tensor repack or
  the SGLang layout (``open_weights``).
* ``smoke``: ``grokfetch smoke``: run the pass and judge its output.
"""
