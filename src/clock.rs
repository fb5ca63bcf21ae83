//! Coarse clocks, for what needs no finer than the kernel's tick: a
//! monotonic one in milliseconds (idle tracking, connection timeouts) and
//! the wall clock for the access log's timestamps (whole seconds).
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

/// The wall clock, to within a tick (`CLOCK_REALTIME_COARSE`).
pub fn coarse_wall() -> std::time::SystemTime {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    let since_epoch = std::time::Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    );
    std::time::SystemTime::UNIX_EPOCH + since_epoch
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bounds allow far more than a tick of lag: on a busy virtual
    // machine the tick that advances the coarse clocks can come late.

    #[test]
    fn follows_the_fine_clock_in_milliseconds() {
        let fine = std::time::Instant::now();
        let start = coarse_ms();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let end = coarse_ms();
        let elapsed = u64::try_from(fine.elapsed().as_millis()).unwrap();
        assert!(
            end >= start + 50,
            "coarse clock advanced {} ms in a 100 ms sleep",
            end - start
        );
        assert!(
            end - start <= elapsed + 50,
            "coarse {} ms, fine {elapsed} ms",
            end - start
        );
    }

    #[test]
    fn the_coarse_wall_clock_is_the_wall_clock() {
        let before = std::time::SystemTime::now();
        let coarse = coarse_wall();
        let after = std::time::SystemTime::now();
        let slack = std::time::Duration::from_secs(1);
        assert!(coarse <= after + slack, "{coarse:?} after {after:?}");
        assert!(coarse + slack >= before, "{coarse:?} before {before:?}");
    }
}
