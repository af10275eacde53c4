//! Status codes, the per-thread last-error text and the panic boundary
//! every exported function runs inside (rustls-ffi's `ffi_panic_boundary`,
//! as a function): a Rust panic never unwinds into C, it becomes
//! `GD_STATUS_PANIC` with its message in `gd_last_error()`.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a `gd_` function did. `GD_STATUS_OK` is 0; every other value is a
/// failure whose text `gd_last_error()` returns on the same thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum gd_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 2,
    /// A JID argument could not be parsed.
    InvalidJid = 3,
    /// Another argument was out of range (unknown enum value, index, ...).
    InvalidArgument = 4,
    /// The configuration text was rejected; the message names the option path.
    Config = 5,
    /// The runtime could not start (TLS files, store, listeners, threads).
    Start = 6,
    /// The runtime was stopped with `gd_runtime_stop`.
    Stopped = 7,
    /// `gd_route_try` needs a lookup or a new connection: call `gd_route`
    /// from a host thread.
    WouldBlock = 8,
    /// A blocking function was called on a runtime thread (inside a callback).
    InCallback = 9,
    /// The metadata store could not answer.
    Store = 10,
    /// A bug: Rust code panicked; the runtime may be unusable.
    Panic = 11,
}

/// A failure on its way to C: a status and the text for `gd_last_error()`.
#[derive(Debug)]
pub(crate) struct Error {
    pub status: gd_status,
    pub message: String,
}

impl Error {
    pub fn new(status: gd_status, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Remembers `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    // Interior NULs cannot be shown by C: replace them.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(text));
}

/// Pointer to this thread's last error text (empty string when none).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|e| match &*e.borrow() {
        Some(s) => s.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// Runs `f` behind the panic boundary and turns its outcome into a status.
pub(crate) fn boundary<F>(f: F) -> gd_status
where
    F: FnOnce() -> Result<()>,
{
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => gd_status::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            set_last_error(&format!("internal error (panic): {what}"));
            gd_status::Panic
        }
    }
}
