//! Property tests of the partition log against a plain in-memory model.
