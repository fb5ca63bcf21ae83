//! A coarse monotonic clock in milliseconds, for bookkeeping that needs no
//! finer than the kernel's tick: idle tracking and connection timeouts.
//!
//! Why not `Instant`: `CLOCK_MONOTONIC_COARSE` is answered from the vDSO
//! without reading the TSC (a few nanoseconds instead of ~25), and the
//! request path reads these clocks several times per request. It runs on
//! the same base as `Instant` and lags it by less than one tick (1–10 ms);
//! readings never go backwards.

/// Milliseconds on the coarse monotonic clock (an arbitrary origin).
pub fn coarse_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let millis = u64::try_from(t.tv_nsec / 1_000_000).unwrap_or(0);
    secs * 1000 + millis
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_fine_clock_within_a_tick() {
        let fine = std::time::Instant::now();
        let start = coarse_ms();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let end = coarse_ms();
        let elapsed = u64::try_from(fine.elapsed().as_millis()).unwrap();
        assert!(
            end >= start + 40,
            "coarse clock advanced {} ms in a 50 ms sleep",
            end - start
        );
        assert!(
            end - start <= elapsed + 10,
            "coarse {} ms, fine {elapsed} ms",
            end - start
        );
    }
}
