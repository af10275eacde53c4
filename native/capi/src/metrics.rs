//! Metrics snapshot (JSON) and Prometheus text, plus the strings the
//! library hands over to C and takes back with `gd_string_free`.

use std::ffi::{c_char, CString};

use crate::args::{non_null, not_in_callback, out_ptr};
use crate::error::{boundary, gd_status};
use crate::runtime::gd_runtime;

/// `s` as a malloc-independent C string the caller frees with
/// `gd_string_free`.
pub(crate) fn into_c_string(s: String) -> *mut c_char {
    CString::new(s.replace('\0', "\\0"))
        .unwrap_or_default()
        .into_raw()
}

/// A snapshot of every metric (SPEC 8 names, `global.mod_global_distrib.*`)
/// as a JSON object in `*out`: counters and gauges as numbers, histograms
/// as `{count, min, max, mean, p50, p95, p99, ...}`. The caller owns the
/// string and frees it with `gd_string_free`. Never blocks; allowed inside
/// a callback and after `gd_runtime_stop`.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_metrics_json(
    rt: *const gd_runtime,
    out: *mut *mut c_char,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, writable out).
        let (rt, out) = unsafe { (non_null(rt, "rt")?, out_ptr(out, "out")?) };
        *out = into_c_string(rt.rt.metrics().snapshot().to_json());
        Ok(())
    })
}

/// The same metrics in Prometheus text exposition format 0.0.4 in `*out`,
/// owned by the caller (free with `gd_string_free`). Never blocks; allowed
/// inside a callback and after `gd_runtime_stop`.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_metrics_prometheus(
    rt: *const gd_runtime,
    out: *mut *mut c_char,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, writable out).
        let (rt, out) = unsafe { (non_null(rt, "rt")?, out_ptr(out, "out")?) };
        *out = into_c_string(rt.rt.metrics().prometheus());
        Ok(())
    })
}

/// The store's health in `*out`, a JSON object owned by the caller (free
/// with `gd_string_free`), for a load balancer's check:
///
/// ```text
/// {"status":"ok"|"degraded"|"down", "backend":"redis", "reachable":true,
///  "last_error":null|{"kind":"timeout","message":"...","age_secs":3},
///  "pending_opens":0, "last_refresh_age_secs":12|null,
///  "refresh_lag_secs":0, "unrefreshed_keys":0,
///  "errors":{"auth":0,"closed":0,"config":0,"connect":0,"down":0,
///            "noperm":0,"protocol":0,"refused":0,"timeout":0}}
/// ```
///
/// `degraded`: reachable, but opens are pending or the last refresh pass
/// is late or incomplete; `down`: the last store call found the store
/// unusable. Sends one `GET` of the health sentinel first. Blocks (at most
/// `redis.timeout_ms`, at once while the store is known down); not allowed
/// inside a callback; `GD_STATUS_STOPPED` after `gd_runtime_stop`.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_runtime_store_health(
    rt: *const gd_runtime,
    out: *mut *mut c_char,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, writable out).
        let (rt, out) = unsafe { (non_null(rt, "rt")?, out_ptr(out, "out")?) };
        *out = std::ptr::null_mut();
        let _log = rt.enter_log();
        let live = rt.live()?;
        not_in_callback("gd_runtime_store_health")?;
        *out = into_c_string(live.block_on(live.store_health()).to_json());
        Ok(())
    })
}

/// Frees a string this library returned through a `char **out` argument.
/// Not for any other pointer (not for `gd_last_error`, `gd_version`,
/// `gd_route_result` or `gd_delivery` strings). NULL is ignored.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_string_free(s: *mut c_char) -> gd_status {
    boundary(|| {
        if !s.is_null() {
            // SAFETY: produced by CString::into_raw in into_c_string.
            drop(unsafe { CString::from_raw(s) });
        }
        Ok(())
    })
}

/// The name of a `gd_status` value as a static string
/// ("GD_STATUS_NULL_ARGUMENT", ...; "GD_STATUS_UNKNOWN" for other values).
/// Never NULL, never freed. Allowed anywhere.
#[no_mangle]
pub extern "C" fn gd_status_name(status: u32) -> *const c_char {
    const NAMES: [&std::ffi::CStr; 12] = [
        c"GD_STATUS_OK",
        c"GD_STATUS_NULL_ARGUMENT",
        c"GD_STATUS_INVALID_UTF8",
        c"GD_STATUS_INVALID_JID",
        c"GD_STATUS_INVALID_ARGUMENT",
        c"GD_STATUS_CONFIG",
        c"GD_STATUS_START",
        c"GD_STATUS_STOPPED",
        c"GD_STATUS_WOULD_BLOCK",
        c"GD_STATUS_IN_CALLBACK",
        c"GD_STATUS_STORE",
        c"GD_STATUS_PANIC",
    ];
    usize::try_from(status)
        .ok()
        .and_then(|i| NAMES.get(i))
        .unwrap_or(&c"GD_STATUS_UNKNOWN")
        .as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn status_names_follow_the_enum_values() {
        let name = |v: u32| {
            // SAFETY: gd_status_name returns static NUL-terminated strings.
            unsafe { CStr::from_ptr(gd_status_name(v)) }
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(name(gd_status::Ok as u32), "GD_STATUS_OK");
        assert_eq!(name(gd_status::Config as u32), "GD_STATUS_CONFIG");
        assert_eq!(name(gd_status::Panic as u32), "GD_STATUS_PANIC");
        assert_eq!(name(gd_status::Panic as u32 + 1), "GD_STATUS_UNKNOWN");
    }

    #[test]
    fn panics_become_a_status_and_a_message() {
        let st = crate::error::boundary(|| panic!("boom"));
        assert_eq!(st, gd_status::Panic);
        // SAFETY: gd_last_error returns a valid NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(crate::gd_last_error()) };
        assert!(msg.to_str().unwrap().contains("boom"));
    }
}
