"""Names of the files grokfetch keeps in a folder beside the model's own files."""

from __future__ import annotations

# The repack journal: one JSON line per finished output, so a killed run knows what
# finished; replaced by the folder's manifest when the run completes.
JOURNAL_NAME = ".grokfetch-repack-journal.jsonl"
