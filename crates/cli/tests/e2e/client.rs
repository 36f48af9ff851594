//! End-to-end tests of the client.
