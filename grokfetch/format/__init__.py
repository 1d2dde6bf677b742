"""The on-disk formats grokfetch reads and writes, each written down once.

The bottom layer of the package: every stage (verify, get, repack, smoke)
imports from here and nothing here imports a stage, a libtorrent session or
the CLI.

* ``layout``: the model spec (``ModelConfig``), the parameter list in JAX
  flatten order, the checkpoint's file names, layer selection.
* ``arrays``: ``ArrayRef``, an array at an offset in a file, and ``BFLOAT16``.
* ``pickle_reader`` / ``pickle_writer``: the checkpoint's pickle files, read
  without unpickling and written byte for byte as the official code did.
* ``safetensors``: dtype names, the header (parsed and written), the
  streaming writer.
* ``sglang``: SGLang's tensor names and orientation, config.json both ways.
* ``files``: the bytes of a plain or zstd-compressed file by offset.
* ``folder``: names of the files grokfetch keeps beside a model's own.

docs/FORMAT.md describes the checkpoint format itself.
"""
