//! Declares the `tokio_unstable` cfg (set for the whole workspace in
//! `.cargo/config.toml`), which the simulation checks for: without it a
//! seed does not replay exactly.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tokio_unstable)");
}
