"""Proving the bytes: verify, the torrent's pieces, the verified record, OMS signatures.

* ``verify``: ``verify()`` (every file against the best root of trust) and
  ``pin()`` (the BLAKE3 manifest that later runs check against), in named phases.
* ``pieces``: a torrent's SHA-1 pieces checked from disk, no libtorrent session.
* ``verified_record``: what a full verify proved, for ``verify --changed-only``.
* ``signing``: OpenSSF Model Signing bundles, made and checked.

Above ``format`` and the base modules; never imports ``fetch``, ``repack`` or ``model``.
"""
