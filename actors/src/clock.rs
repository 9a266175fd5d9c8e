//! The engine clock. Real time by default; a manual clock (real time plus an offset that only
//! moves forward by `advance`) lets tests and demos pass days in milliseconds.

use audience_state::model::TimestampMs;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Clock {
    manual: bool,
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn new(manual: bool) -> Self {
        Clock {
            manual,
            offset_ms: AtomicI64::new(0),
        }
    }

    pub fn is_manual(&self) -> bool {
        self.manual
    }

    pub fn now(&self) -> TimestampMs {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        real + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves a manual clock forward; refused on a real clock.
    pub fn advance(&self, millis: i64) -> Result<TimestampMs, String> {
        if !self.manual {
            return Err("the engine clock is not manual (set clock.manual = true)".into());
        }
        if millis < 0 {
            return Err(format!(
                "millis: {millis} is negative; the clock only moves forward"
            ));
        }
        self.offset_ms.fetch_add(millis, Ordering::Relaxed);
        Ok(self.now())
    }
}
