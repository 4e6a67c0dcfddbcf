//! The stack ends 2 KiB short of 1 MiB, so that the ESP guest's statics
//! (data and zeroed, under 2 KiB; the allocator's state is among them)
//! sit in the same 4 KiB page as the top of the stack, which every call
//! touches: one page less per instance than a stack of exactly 1 MiB with
//! the statics in a page of their own after it (#13: memory per tenant). Only the layout changes: the stack is as large as before,
//! and larger statics simply spill into the next page.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=-zstack-size={}", (1 << 20) - 2048);
    }
}
