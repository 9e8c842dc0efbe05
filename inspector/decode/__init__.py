"""Image bytes to pixels: JPEG validation and decoding, the decode thread pool, image files to tensors."""
