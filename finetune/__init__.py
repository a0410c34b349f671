"""Click logs → training → models.  This slice defines the click-log format (``core.formats.clicklog``)."""
