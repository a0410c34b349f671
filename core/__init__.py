"""The bottom layer every other package imports (and that imports none of them): the shared types and errors
(:mod:`core.types`), ranking metrics and the paired bootstrap (:mod:`core.metrics`, :mod:`core.bootstrap`), and
the file formats the project reads and writes (:mod:`core.formats`: catalogs, click logs, judged queries)."""
