"""The sorter: defect alerts in, one on-time ejection per defective object out, over the line's own protocols."""
