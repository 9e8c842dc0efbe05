"""The synthetic banana line: rendered scenes of good and defective bananas, and data sets of them."""
