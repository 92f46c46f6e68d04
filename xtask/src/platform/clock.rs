//! The clocks the report uses: Unix seconds now, and whole seconds on the load's clock.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every time the report shows is whole seconds on the load's clock (seconds since the load
/// started), rounded down. The API's timestamps are whole Unix seconds (RFC 3339, truncated), the
/// load's windows whole seconds from its start: rounding both down the same way keeps their order
/// (a pod's first request never shows before the Ready it needed). The real time of a shown `s`
/// lies in `[s, s + 1)` for the load's own times and in `[s, s + 2)` for the API's (its second,
/// then the rounding onto the load's clock).
pub fn clock_s(t: f64) -> f64 {
    t.floor()
}
