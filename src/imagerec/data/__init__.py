"""Reading the user's data: files → one in-memory index of samples → datasets."""
