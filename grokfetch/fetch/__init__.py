"""Getting the bytes: the libtorrent session, download and seed, the mirror.

* ``torrent``: session setup, ``download()`` in named phases, the ``Seeder``.
* ``fleet``: the cluster view of a seeder's peers.
* ``mirror``: whole files from a Hugging Face mirror, each proven by its SHA-256.
* ``backsource``: the mirror as a source of pieces for a slow swarm.

Above ``integrity``: ``get`` pins what it downloads (``verify.pin``).
"""
