"""Images in: checked decoding, folders, zips and uploads, the split, the bundled samples. Imports ``core`` and
``models`` (for a backbone's preprocessing)."""
