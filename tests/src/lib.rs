//! Test harness for twreset integration tests.
