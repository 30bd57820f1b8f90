//! The `switchyard` binary: see `switchyard --help`.

/// mimalloc: allocations on the request path (header maps, buffers) cost a
/// fraction of glibc malloc's (measured with callgrind, see docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
