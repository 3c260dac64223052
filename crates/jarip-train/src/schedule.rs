//! Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Cosine from the peak down to `min_lr_frac · peak` at the end.
    Cosine,
    /// Constant at the peak, then a linear decay over the last `decay_frac` of training.
    Wsd,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    pub min_lr_frac: f64,
    /// WSD only: share of training spent decaying.
    pub decay_frac: f64,
}

impl Schedule {
    /// Multiplier of the peak rate for 0-based `step` of `total` steps: a function of the step
    /// alone, so a resumed or replayed run follows exactly the same rates.
    pub fn factor(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1);
        let p = ((step - self.warmup_steps) as f64 / span as f64).clamp(0.0, 1.0);
        let lo = self.min_lr_frac;
        match self.kind {
            ScheduleKind::Cosine => lo + (1.0 - lo) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            ScheduleKind::Wsd => {
                let start = 1.0 - self.decay_frac;
                if p < start {
                    1.0
                } else {
                    1.0 - (1.0 - lo) * (p - start) / self.decay_frac.max(1e-9)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_then_decays() {
        let s = Schedule { kind: ScheduleKind::Cosine, warmup_steps: 10, min_lr_frac: 0.1, decay_frac: 0.2 };
        assert!(s.factor(0, 100) < s.factor(5, 100));
        assert_eq!(s.factor(9, 100), 1.0);
        assert!((s.factor(10, 100) - 1.0).abs() < 1e-12);
        assert!(s.factor(50, 100) < 1.0 && s.factor(50, 100) > s.factor(90, 100));
        assert!((s.factor(100, 100) - 0.1).abs() < 1e-9);
        let w = Schedule { kind: ScheduleKind::Wsd, ..s };
        assert_eq!(w.factor(50, 100), 1.0);
        assert!((w.factor(100, 100) - 0.1).abs() < 1e-9);
        assert!(w.factor(95, 100) < 1.0);
    }
}
