//! One name for "the async file API can submit on the callers' threads": io_uring (Linux, the
//! `io-uring` feature) and tokio's reactor (the `tokio` feature). The code says
//! `#[cfg(caller_rings)]` instead of repeating the three conditions.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(caller_rings)");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let uring = std::env::var_os("CARGO_FEATURE_IO_URING").is_some();
    let tokio = std::env::var_os("CARGO_FEATURE_TOKIO").is_some();
    if linux && uring && tokio {
        println!("cargo::rustc-cfg=caller_rings");
    }
}
