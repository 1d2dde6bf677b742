"""Build the model manifests shipped in manifests/ from first principles.

``manifests/grok-1.json`` is not typed by hand: every file size comes from
the layout (the real config) and the exact pickle framing
(``pickle_writer.pickled_size``), and the per-file SHA-256 values come from
the table of what the Hugging Face mirror shows (tests/data/grok1-hf-sha256.tsv).
Regenerate with::

    python -m grokfetch.format.models tests/data/grok1-hf-sha256.tsv > manifests/grok-1.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grokfetch.format.layout import GROK1, param_list
from grokfetch.format.manifest import FileEntry, Manifest, Sources
from grokfetch.format.pickle_writer import ArrayData, pickled_size

GROK1_INFO_HASH = "5f96d43576e3d386c9ba65b883210a393b68210e"
GROK1_TRACKERS = [
    "https://academictorrents.com/announce.php",
    "udp://tracker.coppersurfer.tk:6969",
    "udp://tracker.opentrackr.org:1337/announce",
]
GROK1_MAGNET = (
    "magnet:?xt=urn:btih:5f96d43576e3d386c9ba65b883210a393b68210e"
    "&tr=https%3A%2F%2Facademictorrents.com%2Fannounce.php"
    "&tr=udp%3A%2F%2Ftracker.coppersurfer.tk%3A6969"
    "&tr=udp%3A%2F%2Ftracker.opentrackr.org%3A1337%2Fannounce"
)
# The Hugging Face mirror: the repository root is the checkpoint root.
GROK1_MIRRORS = [{"kind": "huggingface", "repo": "xai-org/grok-1", "revision": "main",
                  "folder": "ckpt-0"}]
# Academic Torrents (the magnet's tracker) serves the published .torrent here.
GROK1_TORRENT_URL = f"https://academictorrents.com/download/{GROK1_INFO_HASH}.torrent"
# Grok-1's SentencePiece tokenizer: not in the torrent, it ships with the official code
# repository; grokfetch carries a copy (grokfetch/data/tokenizer.model).
GROK1_TOKENIZER = FileEntry(
    path="tokenizer.model", size=2_229_219,
    sha256="5c69d7cbad192fa2c9d14e2a77fbfdc11597c68907b043ddb0260e3d28eddd7f",
    sha256_source="xai-org/grok-1 code repository, tokenizer.model at commit "
                  "7050ed204b8206bb8645c7b7bbef7252f79561b0 (Apache-2.0)",
)
HF_SOURCE = "Hugging Face mirror xai-org/grok-1 (Git LFS oid = SHA-256 of the file), per-file page"


def read_sha256_table(path: str | Path) -> dict[str, tuple[str, str]]:
    """{relative path: (sha256, source page)} from the collected TSV."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("file\t"):
            continue
        file, sha, _slot, source = line.split("\t")
        out[file] = (sha, source)
    return out


def grok1_manifest(sha256_table: dict[str, tuple[str, str]]) -> Manifest:
    files = []
    for spec in param_list(GROK1):
        arrays = {a.name: ArrayData(a.numpy_dtype, a.shape) for a in spec.arrays}
        sha, src = sha256_table.get(spec.file, (None, None))
        files.append(FileEntry(
            path=spec.file, size=pickled_size(spec.kind, arrays), sha256=sha,
            sha256_source=src, param=spec.module, kind=spec.kind, layer=spec.layer,
            arrays=[a.to_dict() for a in spec.arrays],
        ))
    return Manifest(
        name="grok-1",
        files=files,
        license="Apache-2.0",
        pinned=False,
        config=GROK1,
        sources=Sources(magnet=GROK1_MAGNET, info_hash=GROK1_INFO_HASH,
                        trackers=list(GROK1_TRACKERS), web_seeds=[],
                        sha256_source=HF_SOURCE, mirrors=GROK1_MIRRORS,
                        torrent_url=GROK1_TORRENT_URL),
        notes=("xAI published no per-file hashes: the torrent info-hash is the root of trust. "
               "sha256 values are what the Hugging Face mirror shows for the files listed; "
               "sizes are derived from the layout and the exact pickle framing. Not pinned: "
               "run `grokfetch get` (or `grokfetch verify --torrent ... --pin`) to pin BLAKE3 "
               "hashes. Mirror: https://huggingface.co/xai-org/grok-1/tree/main/ckpt-0"),
        tokenizer=GROK1_TOKENIZER,
    )


def main(argv: list[str]) -> None:
    table = read_sha256_table(argv[0]) if argv else {}
    json.dump(grok1_manifest(table).to_dict(), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
