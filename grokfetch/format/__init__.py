"""The on-disk formats grokfetch reads and writes, each written down once.

The bottom layer of the package: every stage (verify, get, repack, smoke)
imports from here and nothing here imports a stage, a libtorrent session, a
progress bar or the CLI.

* ``layout``: the model spec (``ModelConfig``), the parameter list in JAX
  flatten order, the checkpoint's file names, layer selection.
* ``arrays``: ``ArrayRef``, an array at an offset in a file, and ``BFLOAT16``.
* ``pickle_reader`` / ``pickle_writer``: the checkpoint's pickle files, read
  without unpickling and written byte for byte as the official code did.
* ``safetensors``: dtype names, the header (parsed and written), the
  streaming writer.
* ``sglang``: SGLang's tensor names and orientation, config.json both ways.
* ``files``: the bytes of a plain or zstd-compressed file by offset.
* ``manifest``: grokfetch's manifest (entries to and from dicts, pins), the
  packaged manifests and ``by_info_hash``; ``models`` regenerates Grok-1's.
* ``metainfo``: .torrent files and magnet links (libtorrent's bencode types,
  never a session).
* ``folder``: ``locate()`` and ``Folder``: root, ckpt-0 and every file name
  grokfetch keeps beside a model's own.
* ``checkpoint``: the model config of a folder (explicit, pinned, inferred)
  and its files checked against the layout.
* ``tokenizer``: the packaged SentencePiece tokenizer and its manifest entry.

docs/FORMAT.md describes the checkpoint format itself.
"""
