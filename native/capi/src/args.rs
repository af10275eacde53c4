//! Reading C arguments: NULL checks, UTF-8, JIDs, enum values. Every
//! failure names the argument so `gd_last_error()` says which one.

use std::ffi::{c_char, CStr};

use gd_core::jid::Jid;
use gd_core::transport::frame::PayloadKind;

use crate::error::{gd_status, Error, Result};

/// `ptr` as a reference, or `NullArgument` naming `what`.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` for `'a`.
pub(crate) unsafe fn non_null<'a, T>(ptr: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid for 'a.
    unsafe { ptr.as_ref() }.ok_or_else(|| null(what))
}

/// `ptr` as a mutable reference, or `NullArgument` naming `what`.
///
/// # Safety
/// `ptr` is NULL or points to writable memory for a `T`.
pub(crate) unsafe fn out_ptr<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid for 'a.
    unsafe { ptr.as_mut() }.ok_or_else(|| null(what))
}

pub(crate) fn null(what: &str) -> Error {
    Error::new(
        gd_status::NullArgument,
        format!("{what}: NULL pointer where a value is required"),
    )
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string live for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        Error::new(
            gd_status::InvalidUtf8,
            format!(
                "{what}: not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

/// A JID argument, parsed and normalised.
///
/// # Safety
/// As for [`str_arg`].
pub(crate) unsafe fn jid_arg(ptr: *const c_char, what: &str) -> Result<Jid> {
    // SAFETY: forwarded from the caller.
    let text = unsafe { str_arg(ptr, what) }?;
    Jid::parse(text).map_err(|e| Error::new(gd_status::InvalidJid, format!("{what}: {e}")))
}

/// A `gd_payload_kind` value received as an integer (an out-of-range C
/// enum value must not become a Rust enum).
pub(crate) fn payload_kind_arg(value: u32) -> Result<PayloadKind> {
    u8::try_from(value)
        .ok()
        .and_then(PayloadKind::from_u8)
        .ok_or_else(|| {
            Error::new(
                gd_status::InvalidArgument,
                format!("kind: {value} is not a gd_payload_kind (expected 0..=4)"),
            )
        })
}

/// A byte buffer argument; `len == 0` accepts a NULL pointer.
///
/// # Safety
/// `ptr` is NULL or points to `len` readable bytes.
pub(crate) unsafe fn bytes_arg<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and `len` readable bytes per the caller.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Refuses blocking calls on a runtime thread (inside a callback), where
/// waiting would stall the runtime or panic in tokio.
pub(crate) fn not_in_callback(function: &str) -> Result<()> {
    if tokio_context() {
        return Err(Error::new(
            gd_status::InCallback,
            format!(
                "{function} blocks and was called on a runtime thread (inside a callback); \
                 call it from a host thread, or use gd_route_try"
            ),
        ));
    }
    Ok(())
}

fn tokio_context() -> bool {
    tokio::runtime::Handle::try_current().is_ok() || crate::callbacks::on_delivery_thread()
}
