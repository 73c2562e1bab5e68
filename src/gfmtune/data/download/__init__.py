"""The download stage: fetch PASTIS-HD (S2 part) and verify every file before it is used.

Sources: ``huggingface`` (IGNF/PASTIS-HD at a pinned commit, per-file sha256), ``zenodo`` (a
record's files, md5, archives extracted safely), ``local`` (a folder or an archive) and
``synthetic``. Modules: :mod:`.http` (resumable verified downloads), :mod:`.zenodo`,
:mod:`.huggingface`, :mod:`.local` (archive extraction and the layout check) and :mod:`.cli`
(``gfmtune download``). Submodules are imported on use: the synthetic source needs no hub client.
"""
