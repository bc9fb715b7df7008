//! The `palworker` binary: everything lives in the library (`palworker::cli`).
#![deny(unsafe_code)]

/// jemalloc rather than the system allocator: sled's page cache and the
/// executor's per-action records churn many small allocations across threads,
/// which glibc's per-thread arenas keep resident long after they are freed
/// (peak RSS of the 100,000-account fan-out: 304 MiB with glibc; see the
/// README's Performance section for jemalloc).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it initialises: a background thread
/// returns freed pages to the system after a tenth of a second, instead of
/// jemalloc's default ten, so RSS follows the live heap during and after a
/// burst (a fan-out) rather than its peak (peak RSS of the fan-out, same
/// machine and hour: 96 MiB at 100 ms, 99 MiB at 250 ms; 1 s was 2 to 4 MiB
/// more than 250 ms; the speed is the same); one arena instead of four per CPU, since
/// the worker's few busy threads gain nothing from more while every arena
/// keeps its own freed pages and fragments (peak RSS of the fan-out: 98 MiB
/// with one, 118 MiB with eight). `_RJEM_MALLOC_CONF` in the environment
/// overrides them.
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code, non_upper_case_globals)]
// SAFETY: jemalloc reads this symbol as a `const char *` to a NUL-terminated
// string; `&u8` has that representation, the string is 'static and nothing
// writes it.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &u8 =
    &b"narenas:1,background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0\0"[0];

fn main() -> std::process::ExitCode {
    palworker::cli::main()
}
