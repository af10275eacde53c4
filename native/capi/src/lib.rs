//! C ABI of global_distrib (`include/global_distrib.h`).
//!
//! This crate only translates between C types and `gd_core` types behind a
//! panic boundary; every routing rule lives in the core. The exported
//! functions arrive with the C API issue; until then the crate only checks
//! that the core links into a cdylib and a staticlib.

pub use gd_core::VERSION;
