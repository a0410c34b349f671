"""The file formats every layer shares, each read with validation that names the file, line and field:
catalogs (:mod:`core.formats.catalog`), click logs (:mod:`core.formats.clicklog`) and judged queries
(:mod:`core.formats.judged`)."""
