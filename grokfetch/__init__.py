"""grokfetch: get the Grok-1 checkpoint onto disk, prove it intact, make it loadable.

The package is a pipeline of small stages, one module each:

    layout     the parameter list of a Grok-1-shaped model, in file order
    reader     safe, opcode-walking reader of the checkpoint's pickle files
    pickle_writer / synth   write checkpoints in exactly the real format
    manifest   the JSON manifest (sizes, hashes, sources) and its checks
    checkpoint find and inspect a checkpoint folder
    hashing, verify         BLAKE3 / SHA-256 / torrent-piece verification
    torrent    the libtorrent client (get, seed)
    repack     streaming conversion to safetensors
    forward, smoke          numpy reference forward pass and its checks
    cli        the thin click front end
"""

__version__ = "0.1.0"
