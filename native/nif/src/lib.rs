//! Erlang NIF binding of global_distrib.
//!
//! This crate only translates between Erlang terms and `gd_core` types and
//! moves work off the BEAM schedulers; every routing rule lives in the core.
//! The Rustler entry points arrive with the Erlang binding issue; until then
//! the crate only checks that the core links into a cdylib.

pub use gd_core::VERSION;
