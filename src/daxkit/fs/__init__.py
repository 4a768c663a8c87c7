"""daxfs: a small extent-based DAX filesystem on a daxkit device (SPEC 3)."""
