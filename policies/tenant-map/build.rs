//! A policy module needs little stack: 64 KiB instead of Rust's default
//! 1 MiB makes each tenant's instance smaller to map and reset. The stack
//! ends 3.5 KiB short of 64 KiB so that the module's statics (data and
//! zeroed, the allocator's state among them: under 3.5 KiB when the guests
//! are built with `cargo xtask build`) share a 4 KiB page with the top of
//! the stack, which every call touches: one page less per tenant than
//! statics in a page of their own (#13). A module with more loses nothing
//! by it; its statics spill into the next page.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=-zstack-size={}", 64 * 1024 - 3584);
    }
}
