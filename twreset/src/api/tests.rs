//! Server tests against a fake owner: real HTTP over a real unix socket, no kernel programs.
