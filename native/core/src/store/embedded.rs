//! In-process backend with Redis' expiry semantics.
