//! sled implementation of the store (in progress).
