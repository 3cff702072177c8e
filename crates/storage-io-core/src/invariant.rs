//! [`invariant!`](crate::invariant!): an executable invariant at a state transition.
//!
//! A broken invariant is a bug of ours, not an error of the caller's: in debug builds (and
//! tests) it panics at once, where the state went wrong; in release builds it logs an error
//! (with the condition, the message and the place) and carries on, since a panic on the I/O
//! path would turn one bad counter into a lost process. Never use it for input checks: bad
//! input is a `StorageIoError`.

use std::fmt;

/// Checks `cond` at a state transition: panics in debug builds, logs (never panics) in release
/// builds. The message says what should hold, with the values that did not.
///
/// ```
/// let (durable, written) = (8u64, 12u64);
/// storage_io_core::invariant!(durable <= written, "durable {durable} past written {written}");
/// ```
#[macro_export]
macro_rules! invariant {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::invariant_broken(::core::stringify!($cond), ::core::format_args!($($arg)+));
        }
    };
}

/// What [`invariant!`](crate::invariant!) calls when its condition is false (see the module
/// docs): panics in debug builds, logs an error in release builds.
#[cold]
#[track_caller]
pub fn invariant_broken(cond: &str, message: fmt::Arguments<'_>) {
    let at = std::panic::Location::caller();
    if cfg!(debug_assertions) {
        panic!("invariant broken at {at}: {cond}: {message}");
    }
    tracing::error!(%at, cond, %message, "invariant broken; carrying on (a bug: please report it)");
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kept_invariant_is_silent() {
        let (a, b) = (1, 2);
        crate::invariant!(a < b, "{a} < {b}");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "invariant broken")]
    fn a_broken_invariant_panics_in_debug_builds() {
        let (a, b) = (3, 2);
        crate::invariant!(a < b, "{a} < {b}");
    }
}
