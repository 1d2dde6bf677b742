"""The repack stage: a checkpoint into safetensors, per-tensor files or SGLang-loadable shards.

The source files are pickles that run code when loaded; every other stack
wants safetensors.  ``repack`` reads the sources only through the safe
reader (offsets and shapes, never unpickling) and writes with the streaming
writer in ``grokfetch.format.safetensors`` (bytes copied from their offsets, dequantized
in row blocks), so memory stays bounded and the int8 path runs near copy
speed.

Two layouts:

* ``per-tensor`` (default): one file per parameter, named after its module
  path (``transformer.decoder_layer_10.moe.linear.safetensors``), the layers
  in zero-padded folders (``layer-10/``) so a listing reads in layer order.
  ``--dtype keep`` holds ``weight`` (int8) and ``scales`` (bf16) exactly as
  the source; ``bf16``/``f32`` hold one dequantized ``weight``, still in the
  source's [in, out] orientation.
* ``sglang``: bf16 shards (~5 GB) with the names, [out, in] orientation and
  per-expert split of SGLang's Grok-1 loader, plus
  ``model.safetensors.index.json`` and an HF-style ``config.json``.

Every output goes to a temp name, is fsynced and renamed.  Each finished
output is appended to a journal in DEST (one JSON line, fsynced), so a run
killed at any point knows what finished; a rerun skips outputs whose BLAKE3
still matches their record and redoes the rest.  At the end the DEST
manifest (``grokfetch-manifest.json``: every output with its BLAKE3, chunk
hashes and the source file + BLAKE3 it came from) replaces the journal, and
``grokfetch verify DEST`` checks the result.
"""

# plan: the checked options and the output files they make (no I/O);
# journal: what an earlier or interrupted run finished;
# run: ``repack()``, the run in named phases.
