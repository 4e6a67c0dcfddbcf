//! A policy module needs little stack: 64 KiB instead of Rust's default
//! 1 MiB makes each tenant's instance smaller to map and reset.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=-zstack-size=65536");
    }
}
