"""Documents -> knowledge slices: readers per format (document.py, readers.py), structure-aware splitting
(split.py) and the streaming stage with its stats (stage.py). `slice_docs.py` is the command line."""
