//! twreset kernel side: modules and the panic handler only (aya-template layout).
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no `fetch_add` on `AtomicU64` (`maps::tp_first_live_add`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod maps;
mod offsets;
mod programs;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
